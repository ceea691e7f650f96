package policy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft"
)

// nftConn is the part of *nftables.Conn the enforcer writes through: a
// batch of operations committed by Flush as one nf_tables transaction.
// Tests put a recorder in its place.
type nftConn interface {
	AddTable(*nftables.Table) *nftables.Table
	DelTable(*nftables.Table)
	AddSet(*nftables.Set, []nftables.SetElement) error
	DelSet(*nftables.Set)
	SetAddElements(*nftables.Set, []nftables.SetElement) error
	SetDeleteElements(*nftables.Set, []nftables.SetElement) error
	AddChain(*nftables.Chain) *nftables.Chain
	FlushChain(*nftables.Chain)
	DelChain(*nftables.Chain)
	AddRule(*nftables.Rule) *nftables.Rule
	AddObj(nftables.Obj) nftables.Obj
	GetRules(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error)
	GetSetElements(*nftables.Set) ([]nftables.SetElement, error)
	GetObjects(*nftables.Table) ([]nftables.Obj, error)
	Flush() error
	CloseLasting() error
}

// writer writes rulesets into one table.
type writer struct {
	t    *nftables.Table
	sets map[string]*nftables.Set // definitions sent, by name, so that elements name the same set
}

func (w *writer) setDef(name string, s *setSpec) *nftables.Set {
	if d := w.sets[name]; d != nil {
		return d
	}
	d := defSet(w.t, name, s.kind, s.fam)
	w.sets[name] = d
	return d
}

func (w *writer) chain(name string, c *chainSpec) *nftables.Chain {
	ch := &nftables.Chain{Name: name, Table: w.t}
	if c.base {
		accept := nftables.ChainPolicyAccept
		ch.Type, ch.Hooknum, ch.Policy = nftables.ChainTypeFilter, nftables.ChainHookForward, &accept
		ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.prio))
	}
	return ch
}

func (w *writer) addRules(c nftConn, ch *nftables.Chain, spec *chainSpec) int {
	for _, r := range spec.rules {
		rule := &nftables.Rule{Table: w.t, Chain: ch, Exprs: r.exprs}
		if r.comment != "" {
			rule.UserData = nft.Comment(r.comment)
		}
		c.AddRule(rule)
	}
	return len(spec.rules)
}

// queueElems queues the elements of keys (from s) with op, in messages
// that fit.
func (w *writer) queueElems(name string, s *setSpec, keys []string, op func(*nftables.Set, []nftables.SetElement) error) error {
	var es []nftables.SetElement
	for _, k := range keys {
		es = append(es, elements(s.kind, k, s.elems[k])...)
	}
	if len(es) == 0 {
		return nil
	}
	return nft.Chunked(w.setDef(name, s), es, op)
}

// counters carries the denied counts over a full sync, which replaces
// the table and so its counters.
type counters map[string]uint64

// full queues the replacement of the table by rs and returns the rules
// written.
//
// Equivalent to: nft -f with "add table inet T; delete table inet T; table inet T { … }"
func (w *writer) full(c nftConn, rs *ruleset, keep counters) (int, error) {
	c.AddTable(w.t)
	c.DelTable(w.t)
	c.AddTable(w.t)
	w.sets = map[string]*nftables.Set{}
	for _, name := range []string{counterEgress, counterIngress} {
		c.AddObj(&nftables.NamedObj{Table: w.t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{Packets: keep[name]}})
	}
	sets := slices.Sorted(maps.Keys(rs.sets))
	for _, name := range sets {
		if err := c.AddSet(w.setDef(name, rs.sets[name]), nil); err != nil {
			return 0, err
		}
	}
	chains := map[string]*nftables.Chain{}
	for _, name := range slices.Sorted(maps.Keys(rs.chains)) {
		chains[name] = c.AddChain(w.chain(name, rs.chains[name]))
	}
	rules := 0
	for _, name := range slices.Sorted(maps.Keys(rs.chains)) {
		rules += w.addRules(c, chains[name], rs.chains[name])
	}
	// Elements last: a verdict map's lead to chains.
	for _, name := range sets {
		s := rs.sets[name]
		if err := w.queueElems(name, s, slices.Sorted(maps.Keys(s.elems)), c.SetAddElements); err != nil {
			return 0, err
		}
	}
	return rules, nil
}

// diff is what a partial sync changes, by name.
type diff struct {
	newSets, goneSets     []string
	newChains, goneChains []string
	changedChains         []string
	addElems, delElems    map[string][]string // set -> keys
	elemChanges           int
}

// diffOf compares two compilations. A set or chain that is the same
// object in both (a fragment compile reused) is unchanged and not read.
func diffOf(old, rs *ruleset) *diff {
	d := &diff{addElems: map[string][]string{}, delElems: map[string][]string{}}
	for name, s := range rs.sets {
		o := old.sets[name]
		switch {
		case o == nil:
			d.newSets = append(d.newSets, name)
		case o != s:
			d.diffElems(name, o, s)
		}
	}
	for name := range old.sets {
		if rs.sets[name] == nil {
			d.goneSets = append(d.goneSets, name)
		}
	}
	for name, c := range rs.chains {
		switch o := old.chains[name]; {
		case o == nil:
			d.newChains = append(d.newChains, name)
		case o != c && !o.sameRules(c):
			d.changedChains = append(d.changedChains, name)
		}
	}
	for name := range old.chains {
		if rs.chains[name] == nil {
			d.goneChains = append(d.goneChains, name)
		}
	}
	for _, l := range [][]string{d.newSets, d.goneSets, d.newChains, d.changedChains, d.goneChains} {
		slices.Sort(l)
	}
	return d
}

// diffElems records the elements of set name to delete (from o) and add
// (from s).
func (d *diff) diffElems(name string, o, s *setSpec) {
	var del, add []string
	for k, v := range o.elems {
		if nv, ok := s.elems[k]; !ok || nv != v {
			del = append(del, k)
		}
	}
	for k, v := range s.elems {
		if ov, ok := o.elems[k]; !ok || ov != v {
			add = append(add, k)
		}
	}
	if len(del) > 0 {
		slices.Sort(del)
		d.delElems[name] = del
	}
	if len(add) > 0 {
		slices.Sort(add)
		d.addElems[name] = add
	}
	d.elemChanges += len(del) + len(add)
}

func (d *diff) empty() bool {
	return len(d.newSets)+len(d.goneSets)+len(d.newChains)+len(d.goneChains)+len(d.changedChains)+len(d.addElems)+len(d.delElems) == 0
}

// partial queues the change from old to rs and returns the rules
// written. Deletions come first: elements (so that no verdict leads to a
// chain that goes), then the rules of chains that go or change, then
// those chains and the sets no rule reads any more; additions follow:
// sets, chains, rules, elements. Pods, labels and namespaces change
// elements only; rules change when a policy's rules do or a new set of
// policies isolates a pod.
//
// Equivalent to: nft -f with "delete element …; flush chain …; delete chain …; add …"
func (w *writer) partial(c nftConn, old, rs *ruleset, d *diff) (int, error) {
	for _, name := range slices.Sorted(maps.Keys(d.delElems)) {
		if err := w.queueElems(name, old.sets[name], d.delElems[name], c.SetDeleteElements); err != nil {
			return 0, err
		}
	}
	for _, name := range slices.Concat(d.goneChains, d.changedChains) {
		c.FlushChain(w.chain(name, old.chains[name]))
	}
	for _, name := range d.goneChains {
		c.DelChain(w.chain(name, old.chains[name]))
	}
	for _, name := range d.goneSets {
		c.DelSet(w.setDef(name, old.sets[name]))
		delete(w.sets, name)
	}
	for _, name := range d.newSets {
		if err := c.AddSet(w.setDef(name, rs.sets[name]), nil); err != nil {
			return 0, err
		}
	}
	for _, name := range d.newChains {
		c.AddChain(w.chain(name, rs.chains[name]))
	}
	rules := 0
	for _, name := range slices.Concat(d.newChains, d.changedChains) {
		rules += w.addRules(c, w.chain(name, rs.chains[name]), rs.chains[name])
	}
	for _, name := range d.newSets {
		s := rs.sets[name]
		if err := w.queueElems(name, s, slices.Sorted(maps.Keys(s.elems)), c.SetAddElements); err != nil {
			return 0, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(d.addElems)) {
		if err := w.queueElems(name, rs.sets[name], d.addElems[name], c.SetAddElements); err != nil {
			return 0, err
		}
	}
	return rules, nil
}

// intact reports whether the base chains still hold what was written:
// false after nft flush ruleset, delete table or flush table.
func (w *writer) intact(c nftConn, rs *ruleset) bool {
	for _, name := range []string{"egress", "ingress"} {
		rules, err := c.GetRules(w.t, &nftables.Chain{Name: name, Table: w.t})
		if err != nil || len(rules) != len(rs.chains[name].rules) {
			return false
		}
	}
	return true
}

// errDiffers is what verify reports first when the table is not rs.
var errDiffers = errors.New("differs from what was written")

// verify reads every set and chain of rs back and reports the first
// difference: a set flushed, an element deleted or added, a rule removed
// or added.
//
// Equivalent to: nft list table inet T, compared with the enforcer's record
func (w *writer) verify(c nftConn, rs *ruleset) error {
	for _, name := range slices.Sorted(maps.Keys(rs.sets)) {
		s := rs.sets[name]
		es, err := c.GetSetElements(defSet(w.t, name, s.kind, s.fam))
		if err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		if got := readElems(s.kind, es); !maps.Equal(got, s.elems) {
			return fmt.Errorf("set %s: %d elements, want %d: %w", name, len(got), len(s.elems), errDiffers)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rs.chains)) {
		rules, err := c.GetRules(w.t, &nftables.Chain{Name: name, Table: w.t})
		if err != nil {
			return fmt.Errorf("chain %s: %w", name, err)
		}
		if len(rules) != len(rs.chains[name].rules) {
			return fmt.Errorf("chain %s: %d rules, want %d: %w", name, len(rules), len(rs.chains[name].rules), errDiffers)
		}
		for i, r := range rules {
			if got, _ := userdata.GetString(r.UserData, userdata.TypeComment); got != rs.chains[name].rules[i].comment {
				return fmt.Errorf("chain %s: rule %d is %q's, want %q's: %w", name, i, got, rs.chains[name].rules[i].comment, errDiffers)
			}
		}
	}
	return nil
}

// readElems turns elements read from a set of kind k back into the
// ruleset's form: an interval set's start and end elements are paired.
func readElems(k setKind, es []nftables.SetElement) map[string]string {
	out := map[string]string{}
	switch k {
	case kindAddrs:
		var starts, ends [][]byte
		for _, e := range es {
			if e.IntervalEnd {
				ends = append(ends, e.Key)
			} else {
				starts = append(starts, e.Key)
			}
		}
		less := func(s [][]byte) func(i, j int) bool {
			return func(i, j int) bool { return bytes.Compare(s[i], s[j]) < 0 }
		}
		sort.Slice(starts, less(starts))
		sort.Slice(ends, less(ends))
		for _, s := range starts {
			i := sort.Search(len(ends), func(i int) bool { return bytes.Compare(ends[i], s) > 0 })
			if i < len(ends) {
				out[string(s)] = string(ends[i])
			} else {
				out[string(s)] = ""
			}
		}
	case kindPorts:
		for _, e := range es {
			out[string(e.Key)] = string(e.KeyEnd)
		}
	case kindVmap:
		for _, e := range es {
			if e.VerdictData != nil {
				out[string(e.Key)] = e.VerdictData.Chain
			} else {
				out[string(e.Key)] = verdictChain(e.Val)
			}
		}
	default:
		for _, e := range es {
			out[string(e.Key)] = ""
		}
	}
	return out
}

// verdictChain returns the chain of a verdict as the kernel sends it in
// an element's data (NFTA_DATA_VERDICT's attributes).
func verdictChain(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	chain := "?"
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			chain = ad.String()
		}
	}
	return chain
}

// readCounters returns the denied counters of the table; none when it
// is missing.
func (w *writer) readCounters(c nftConn) counters {
	objs, err := c.GetObjects(w.t)
	if err != nil {
		return nil
	}
	out := counters{}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj: // what GetObjects returns from the kernel
			out[o.Name] = o.Packets
		case *nftables.NamedObj:
			if ctr, ok := o.Obj.(*expr.Counter); ok {
				out[o.Name] = ctr.Packets
			}
		}
	}
	return out
}
