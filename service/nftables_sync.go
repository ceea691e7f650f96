package service

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/netns"
)

// nftConn is the part of *nftables.Conn the proxy writes through: a
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
	GetRules(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error)
	GetSetElements(*nftables.Set) ([]nftables.SetElement, error)
	Flush() error
	CloseLasting() error
}

// nftPlane is ModeNftables.
type nftPlane struct {
	env  *env
	ns   *netns.NS
	dial func() (nftConn, error)
	// verifyDial opens the socket Verify reads over, apart from the one
	// syncs write through.
	verifyDial func() (nftConn, error)
	conn       nftConn
	fams       map[podnet.Family]*nftFamily
	written    map[Name]*nftRendering
	// owners says which Service holds each entry (an address, protocol
	// and port, or a node port, of one family); losers are the Services
	// that wanted one another held, to be synced again when it is let go.
	owners map[string]Name
	losers map[string]map[Name]bool
}

func newNftPlane(e *env, ns *netns.NS, dial func() (nftConn, error)) *nftPlane {
	verifyDial := dial
	if dial == nil {
		dial = func() (nftConn, error) { return nft.Open(ns) }
		verifyDial = func() (nftConn, error) { return nft.Open(ns) }
	}
	return &nftPlane{env: e, ns: ns, dial: dial, verifyDial: verifyDial, written: map[Name]*nftRendering{}}
}

// connect returns the netlink socket in the proxy's namespace, opening it
// with buffers large enough for a full sync's batch.
func (np *nftPlane) connect() (nftConn, error) {
	if np.conn != nil {
		return np.conn, nil
	}
	c, err := np.dial()
	if err != nil {
		return nil, err
	}
	np.conn = c
	return c, nil
}

// flush commits the queued batch; after an error the socket is replaced.
func (np *nftPlane) flush(c nftConn) error {
	if err := c.Flush(); err != nil {
		c.CloseLasting()
		np.conn = nil
		return err
	}
	return nil
}

// tables returns the proxy's table in each family it programs.
func (np *nftPlane) tables() []*nftables.Table {
	var ts []*nftables.Table
	for _, f := range np.env.r.families {
		ts = append(ts, nft.Table(f, np.env.r.chains.TableName()))
	}
	return ts
}

// intact reads the one rule of each family's nat-prerouting chain: gone
// when someone deleted or flushed the table (nft flush ruleset, nft
// delete table, nft flush table).
func (np *nftPlane) intact() (bool, error) {
	c, err := np.connect()
	if err != nil {
		return false, err
	}
	for _, t := range np.tables() {
		rules, err := c.GetRules(t, &nftables.Chain{Name: "nat-prerouting", Table: t})
		if err != nil || len(rules) != 1 {
			return false, nil
		}
	}
	return true, nil
}

// verifier returns a check that reads every set and map of the proxy's
// tables, and the rules of their fixed chains, and reports whether they
// hold what the proxy had written when verifier was called: a set
// flushed, an element deleted or changed, a rule removed or added by hand
// all read as a difference. The dynamic affinity sets, which the kernel
// fills, are not compared. Elements are compared as the bytes sent. The
// check reads over a socket of its own, so it may run while a sync
// writes; its answer is then stale and the caller drops it.
//
// Equivalent to: nft list table ip NAME, compared with the proxy's record
func (np *nftPlane) verifier() func() (bool, error) {
	if np.fams == nil {
		return func() (bool, error) { return false, nil } // nothing written yet
	}
	type chainWant struct {
		c     *nftables.Chain
		rules int
	}
	want := np.expected()
	sets := map[podnet.Family][]*nftables.Set{}
	chains := map[podnet.Family][]chainWant{}
	for f, ff := range np.fams {
		sets[f] = slices.Collect(maps.Values(ff.sets))
		shapes := map[string]int{}
		for sh := range ff.shapes {
			shapes[entriesChain(sh.kind)]++
		}
		for _, ch := range np.fixedChains(ff) {
			chains[f] = append(chains[f], chainWant{ch.c, len(ch.rules) + shapes[ch.c.Name]})
		}
	}
	log, dial := np.env.log, np.verifyDial
	return func() (bool, error) {
		c, err := dial()
		if err != nil {
			return false, err
		}
		defer c.CloseLasting()
		for f := range sets {
			for _, s := range sets[f] {
				es, err := c.GetSetElements(s)
				if err != nil || !sameElements(s, es, want[f][s.Name]) {
					log.Warn("nftables set differs from what was written", "family", f, "set", s.Name, "elements", len(es), "want", len(want[f][s.Name]))
					return false, nil
				}
			}
			for _, ch := range chains[f] {
				if rules, err := c.GetRules(ch.c.Table, ch.c); err != nil || len(rules) != ch.rules {
					log.Warn("nftables chain differs from what was written", "family", f, "chain", ch.c.Name)
					return false, nil
				}
			}
		}
		return true, nil
	}
}

// sameElements reports whether es, read from set s, are exactly want:
// key to value as the proxy sent them (a verdict map's value is the
// chain it leads to).
func sameElements(s *nftables.Set, es []nftables.SetElement, want map[string]string) bool {
	if len(es) != len(want) {
		return false
	}
	verdicts := s.IsMap && s.DataType.Name == nftables.TypeVerdict.Name
	for _, e := range es {
		v, ok := want[string(e.Key)]
		if !ok {
			return false
		}
		got := string(e.Val)
		switch {
		case s.Interval:
			got = string(e.KeyEnd)
		case !s.IsMap:
			got = ""
		case e.VerdictData != nil:
			got = e.VerdictData.Chain
		case verdicts:
			_, got, _ = strings.Cut(decodeVerdict(e.Val), " ")
		}
		if got != v {
			return false
		}
	}
	return true
}

// expected returns the elements every set should hold, key to value as
// sent (a verdict map's: its chain), per family and set: the Services'
// own and the shared ones.
func (np *nftPlane) expected() map[podnet.Family]map[string]map[string]string {
	out := map[podnet.Family]map[string]map[string]string{}
	put := func(f podnet.Family, set, key, val string) {
		if out[f] == nil {
			out[f] = map[string]map[string]string{}
		}
		if out[f][set] == nil {
			out[f][set] = map[string]string{}
		}
		out[f][set][key] = val
	}
	for _, r := range np.written {
		for e, v := range r.elems {
			put(e.f, e.set, e.key, v)
		}
	}
	for f, ff := range np.fams {
		for rk := range ff.refs {
			set, key, _ := strings.Cut(rk, "/")
			put(f, set, key, "")
		}
		for _, a := range np.env.r.nodePortAddrsOf(f) {
			put(f, "nodeport-ips", string(a.AsSlice()), "")
		}
	}
	return out
}

// elemBatch collects element additions and deletions per set.
type elemBatch struct {
	add, del map[*nftables.Set][]nftables.SetElement
}

// queue adds the element key (with val) of s to the list m holds for s.
func (b *elemBatch) queue(m map[*nftables.Set][]nftables.SetElement, s *nftables.Set, key, val string) {
	m[s] = append(m[s], elem(s, key, val))
}

func newElemBatch() *elemBatch {
	return &elemBatch{add: map[*nftables.Set][]nftables.SetElement{}, del: map[*nftables.Set][]nftables.SetElement{}}
}

func elem(s *nftables.Set, key, val string) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(key)}
	switch {
	case s.DataType.Name == nftables.TypeVerdict.Name:
		e.VerdictData = nft.Verdict(expr.VerdictGoto, val)
	case s.IsMap:
		e.Val = []byte(val)
	case s.Interval:
		e.KeyEnd = []byte(val) // a range's last key
	}
	return e
}

// queueAll queues every element list of m with op, in messages that fit.
func queueAll(m map[*nftables.Set][]nftables.SetElement, op func(*nftables.Set, []nftables.SetElement) error) error {
	for s, es := range m {
		if err := nft.Chunked(s, es, op); err != nil {
			return err
		}
	}
	return nil
}

// writeAffinity queues the chain of a, replacing old's (nil when new):
// endpoints that stay keep their chain and dynamic set, so their clients
// keep their affinity.
//
// Equivalent to:
//
//	chain affinity-H { ip saddr @affinity-H-E update @affinity-H-E { ip saddr } dnat to E … (each endpoint)
//	                   numgen random mod N vmap { 0 : goto affinity-H-E, … } }
//	chain affinity-H-E { update @affinity-H-E { ip saddr } dnat to E }
//	set affinity-H-E { type ipv4_addr; flags dynamic,timeout; timeout T }
func (np *nftPlane) writeAffinity(c nftConn, ff *nftFamily, a, old *nftAffinity) error {
	t := ff.table
	group := &nftables.Chain{Name: a.chain, Table: t}
	kept := map[netip.AddrPort]bool{}
	if old != nil {
		c.FlushChain(group)
		for _, ap := range old.eps {
			if old.timeout == a.timeout && slices.Contains(a.eps, ap) {
				kept[ap] = true
				continue
			}
			np.dropAffinityEndpoint(c, ff, old, ap)
		}
	} else {
		c.AddChain(group)
	}
	epSet := func(ap netip.AddrPort) *nftables.Set {
		return &nftables.Set{Table: t, Name: a.endpointName(ap), ID: nftSetIDs.Add(1), KeyType: ff.addrType(), HasTimeout: true, Dynamic: true, Timeout: time.Duration(a.timeout) * time.Second}
	}
	update := func(s *nftables.Set) expr.Any {
		return &expr.Dynset{SrcRegKey: reg0, SetName: s.Name, Operation: unix.NFT_DYNSET_OP_UPDATE}
	}
	pick := &nftables.Set{Table: t, Name: "__map%d", ID: nftSetIDs.Add(1), Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	var picks []nftables.SetElement
	var rules [][]expr.Any
	for i, ap := range a.eps {
		s := epSet(ap)
		if !kept[ap] {
			if err := c.AddSet(s, nil); err != nil {
				return err
			}
			ch := c.AddChain(&nftables.Chain{Name: s.Name, Table: t})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat([]expr.Any{ff.saddr(reg0), update(s)}, ff.dnatTo(ap))})
		}
		rules = append(rules, slices.Concat([]expr.Any{ff.saddr(reg0), &expr.Lookup{SourceRegister: reg0, SetName: s.Name}, update(s)}, ff.dnatTo(ap)))
		picks = append(picks, nftables.SetElement{Key: nft.NE32(uint32(i)), VerdictData: nft.Verdict(expr.VerdictGoto, s.Name)})
	}
	if err := c.AddSet(pick, picks); err != nil {
		return err
	}
	rules = append(rules, []expr.Any{&expr.Numgen{Register: reg0, Modulus: uint32(len(a.eps)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg0, SetName: pick.Name, SetID: pick.ID, IsDestRegSet: true, DestRegister: 0}})
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: group, Exprs: r})
	}
	return nil
}

func (np *nftPlane) dropAffinityEndpoint(c nftConn, ff *nftFamily, a *nftAffinity, ap netip.AddrPort) {
	ch := &nftables.Chain{Name: a.endpointName(ap), Table: ff.table}
	c.FlushChain(ch)
	c.DelChain(ch)
	c.DelSet(&nftables.Set{Table: ff.table, Name: a.endpointName(ap)})
}

// dropAffinity queues the deletion of a's chains and sets; the shape
// elements that lead to it must be deleted before.
func (np *nftPlane) dropAffinity(c nftConn, ff *nftFamily, a *nftAffinity) {
	group := &nftables.Chain{Name: a.chain, Table: ff.table}
	c.FlushChain(group)
	for _, ap := range a.eps {
		np.dropAffinityEndpoint(c, ff, a, ap)
	}
	c.DelChain(group)
}

// full replaces each family's table in one transaction: the table is
// deleted and written anew with every set, element, chain and rule.
// Connections keep their NAT bindings in conntrack, so none breaks;
// ClientIP affinity starts afresh.
//
// Equivalent to: nft -f with "add table ip NAME; delete table ip NAME; table ip NAME { … }"
func (np *nftPlane) full(ctx context.Context, want map[Name]*Service) (rules int, err error) {
	c, err := np.connect()
	if err != nil {
		return 0, err
	}
	defer np.dropOnError(&err)
	np.fams = map[podnet.Family]*nftFamily{}
	for _, f := range np.env.r.families {
		np.fams[f] = newNftFamily(f, np.env.r.chains.TableName())
	}
	np.owners, np.losers = map[string]Name{}, map[string]map[Name]bool{}
	renders, b := np.renderAll(want)
	for _, f := range np.env.r.families {
		for _, a := range np.env.r.nodePortAddrsOf(f) {
			b.queue(b.add, np.fams[f].sets["nodeport-ips"], string(a.AsSlice()), "")
		}
	}
	for _, f := range np.env.r.families {
		n, err := np.writeTable(c, np.fams[f])
		if err != nil {
			return 0, err
		}
		rules += n
	}
	for _, n := range sortedNames(renders) {
		for _, a := range renders[n].affinity {
			if err := np.writeAffinity(c, np.fams[a.f], a, nil); err != nil {
				return 0, err
			}
		}
	}
	if err := queueAll(b.add, c.SetAddElements); err != nil {
		return 0, err
	}
	if err := np.flush(c); err != nil {
		return 0, err
	}
	for _, ff := range np.fams {
		ff.markWritten()
	}
	for _, r := range renders {
		for e := range r.elems {
			if sh, ok := shapeOf(e.set); ok {
				np.fams[e.f].use[sh]++
			}
		}
	}
	np.written = renders
	return rules, nil
}

// dropOnError forgets the socket when *err is set: the batch queued on it
// so far must not reach the kernel with the next sync's.
func (np *nftPlane) dropOnError(err *error) {
	if *err != nil && np.conn != nil {
		np.conn.CloseLasting()
		np.conn = nil
	}
}

// renderAll renders every Service of want, gives each the entries it may
// hold, and collects their elements (the shared ones once).
func (np *nftPlane) renderAll(want map[Name]*Service) (map[Name]*nftRendering, *elemBatch) {
	renders := make(map[Name]*nftRendering, len(want))
	b := newElemBatch()
	for _, n := range sortedNames(want) {
		r := np.render(want[n])
		np.claim(n, r)
		renders[n] = r
		for e, v := range r.elems {
			b.queue(b.add, np.fams[e.f].sets[e.set], e.key, v)
		}
		for e := range r.shared {
			ff := np.fams[e.f]
			if ff.refs[e.refKey()]++; ff.refs[e.refKey()] == 1 {
				b.queue(b.add, ff.sets[e.set], e.key, "")
			}
		}
	}
	return renders, b
}

// writeTable queues the replacement of ff's table: its sets, its fixed
// chains and rules, and the rule of every shape. It returns the rules.
func (np *nftPlane) writeTable(c nftConn, ff *nftFamily) (int, error) {
	c.AddTable(ff.table)
	c.DelTable(ff.table)
	c.AddTable(ff.table)
	for _, name := range slices.Sorted(maps.Keys(ff.sets)) {
		if err := c.AddSet(ff.sets[name], nil); err != nil {
			return 0, err
		}
	}
	rules := 0
	chains := np.fixedChains(ff)
	for _, ch := range chains {
		c.AddChain(ch.c)
	}
	for _, ch := range chains {
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: ff.table, Chain: ch.c, Exprs: r})
			rules++
		}
	}
	for _, sh := range sortedShapes(ff.shapes) {
		c.AddRule(&nftables.Rule{Table: ff.table, Chain: &nftables.Chain{Name: entriesChain(sh.kind), Table: ff.table}, Exprs: ff.shapeRule(sh)})
		rules++
	}
	return rules, nil
}

// markWritten records that every shape of ff is in the kernel.
func (ff *nftFamily) markWritten() {
	for sh := range ff.shapes {
		ff.shapes[sh] = true
	}
}

// affChange is a ClientIP affinity chain that changes in a partial sync:
// a is nil when it goes, old when it is new.
type affChange struct{ a, old *nftAffinity }

// nftDiff is what a partial sync writes: element changes, the change in
// each shared element's users, and the affinity chains that change.
type nftDiff struct {
	b        *elemBatch
	refDelta map[nftElem]int
	affs     []affChange
	elems    int
	// use is the change in the elements of each shape's set; gone the
	// written shapes it leaves empty, whose sets and rules go too.
	use  map[podnet.Family]map[nftShape]int
	gone map[podnet.Family]map[nftShape]bool
}

// countShape records one element more (or, with delta -1, less) in the
// set named set, when that is a shape's.
func (d *nftDiff) countShape(f podnet.Family, set string, delta int) {
	if sh, ok := shapeOf(set); ok {
		if d.use[f] == nil {
			d.use[f] = map[nftShape]int{}
		}
		d.use[f][sh] += delta
	}
}

// partial writes the changed Services as element changes: deletions of
// what they no longer have, additions of what is new. A shape seen for
// the first time adds its set and rule, and so does a Service port with
// ClientIP affinity. Nothing is read back.
//
// Equivalent to: nft -f with "delete element …; add element …"
func (np *nftPlane) partial(ctx context.Context, changed map[Name]*Service) (n int, err error) {
	if len(changed) == 0 {
		return 0, nil
	}
	c, err := np.connect()
	if err != nil {
		return 0, err
	}
	defer np.dropOnError(&err)
	// Entries the changed Services let go of are free for the others
	// among them, and for the Services that wanted them before: those
	// join this sync, so an entry passes from one to the other in one
	// transaction.
	// A Service that comes before a holder by name takes the entry from
	// it, as a full sync would give it: the holder joins too.
	renders := np.addDisplaced(changed)
	var released []string
	for _, n := range sortedNames(changed) {
		if or := np.written[n]; or != nil {
			released = append(released, np.release(n, or)...)
		}
	}
	np.addLosers(released, changed)
	d := &nftDiff{b: newElemBatch(), refDelta: map[nftElem]int{},
		use: map[podnet.Family]map[nftShape]int{}, gone: map[podnet.Family]map[nftShape]bool{}}
	for _, n := range sortedNames(changed) {
		nr, ok := renders[n]
		if s := changed[n]; s != nil && !ok {
			nr = np.render(s)
		}
		if nr != nil {
			np.claim(n, nr)
		}
		renders[n] = nr
		d.service(np.written[n], nr, np.fams)
	}
	refs := np.sharedChanges(d)
	np.emptiedShapes(d)
	added, err := np.writeDiff(c, d)
	if err != nil {
		return 0, err
	}
	np.commit(d, renders, refs, added)
	return d.elems, nil
}

// service adds the changes of one Service from or to nr (either may be
// nil) to d.
func (d *nftDiff) service(or, nr *nftRendering, fams map[podnet.Family]*nftFamily) {
	var oldElems, newElems map[nftElem]string
	oldAff := map[string]*nftAffinity{}
	if or != nil {
		oldElems = or.elems
		for e := range or.shared {
			d.refDelta[e]--
		}
		for _, a := range or.affinity {
			oldAff[a.f.String()+a.chain] = a
		}
	}
	if nr != nil {
		newElems = nr.elems
		for e := range nr.shared {
			d.refDelta[e]++
		}
		for _, a := range nr.affinity {
			old := oldAff[a.f.String()+a.chain]
			delete(oldAff, a.f.String()+a.chain)
			if old == nil || !old.equal(a) {
				d.affs = append(d.affs, affChange{a, old})
			}
		}
	}
	for _, a := range oldAff {
		d.affs = append(d.affs, affChange{nil, a})
	}
	for e, v := range oldElems {
		if nv, ok := newElems[e]; !ok || nv != v {
			d.b.queue(d.b.del, fams[e.f].sets[e.set], e.key, v)
			d.countShape(e.f, e.set, -1)
		}
	}
	for e, v := range newElems {
		if ov, ok := oldElems[e]; !ok || ov != v {
			d.b.queue(d.b.add, fams[e.f].sets[e.set], e.key, v)
			d.countShape(e.f, e.set, 1)
			d.elems++
		}
	}
}

// sharedChanges queues the shared elements whose first user came or whose
// last user went, and returns every changed element's new user count.
func (np *nftPlane) sharedChanges(d *nftDiff) map[nftElem]int {
	refs := map[nftElem]int{}
	for e, delta := range d.refDelta {
		ff := np.fams[e.f]
		before := ff.refs[e.refKey()]
		after := before + delta
		refs[e] = after
		switch {
		case before == 0 && after > 0:
			d.b.queue(d.b.add, ff.sets[e.set], e.key, "")
		case before > 0 && after == 0:
			d.b.queue(d.b.del, ff.sets[e.set], e.key, "")
		}
	}
	return refs
}

// writeDiff queues d and commits it; it returns the families that gained
// shapes. Deletions come first, so that a chain is no longer referenced
// when it goes and a changed map element can be added again.
func (np *nftPlane) writeDiff(c nftConn, d *nftDiff) ([]*nftFamily, error) {
	if err := queueAll(d.b.del, c.SetDeleteElements); err != nil {
		return nil, err
	}
	for _, ch := range d.affs {
		if ch.a == nil {
			np.dropAffinity(c, np.fams[ch.old.f], ch.old)
		}
	}
	var added []*nftFamily
	for _, ff := range np.fams {
		grew, err := np.writeShapes(c, ff, d.gone[ff.f])
		if err != nil {
			return nil, err
		}
		if grew {
			added = append(added, ff)
		}
	}
	for _, ch := range d.affs {
		if ch.a != nil {
			if err := np.writeAffinity(c, np.fams[ch.a.f], ch.a, ch.old); err != nil {
				return nil, err
			}
		}
	}
	if err := queueAll(d.b.add, c.SetAddElements); err != nil {
		return nil, err
	}
	return added, np.flush(c)
}

// emptiedShapes records in d.gone the written shapes whose sets the
// change leaves without elements.
func (np *nftPlane) emptiedShapes(d *nftDiff) {
	for f, use := range d.use {
		ff := np.fams[f]
		for sh, delta := range use {
			if ff.shapes[sh] && ff.use[sh]+delta == 0 {
				if d.gone[f] == nil {
					d.gone[f] = map[nftShape]bool{}
				}
				d.gone[f][sh] = true
			}
		}
	}
}

// writeShapes queues the sets and rules of ff's new shapes and the
// removal of the gone ones, and reports whether there were new ones. A
// rule has no handle the proxy knows, so a kind that loses a shape has
// its entries chain flushed and written again in the same transaction:
// one validation of the table, as adding a shape costs.
func (np *nftPlane) writeShapes(c nftConn, ff *nftFamily, gone map[nftShape]bool) (bool, error) {
	grew := false
	rewrite := map[string]bool{}
	for sh := range gone {
		rewrite[sh.kind.name] = true
	}
	for _, sh := range sortedShapes(ff.shapes) {
		if ff.shapes[sh] || gone[sh] {
			continue
		}
		grew = true
		if err := c.AddSet(ff.shapeSet(sh), nil); err != nil {
			return false, err
		}
		if !rewrite[sh.kind.name] {
			c.AddRule(&nftables.Rule{Table: ff.table, Chain: &nftables.Chain{Name: entriesChain(sh.kind), Table: ff.table}, Exprs: ff.shapeRule(sh)})
		}
	}
	for _, k := range nftKinds {
		if !rewrite[k.name] {
			continue
		}
		ch := &nftables.Chain{Name: entriesChain(k), Table: ff.table}
		c.FlushChain(ch)
		c.AddRule(&nftables.Rule{Table: ff.table, Chain: ch, Exprs: ff.affinityRule(k)})
		for _, sh := range sortedShapes(ff.shapes) {
			if sh.kind == k && !gone[sh] {
				c.AddRule(&nftables.Rule{Table: ff.table, Chain: ch, Exprs: ff.shapeRule(sh)})
			}
		}
	}
	for _, sh := range sortedShapes(gone) {
		c.DelSet(ff.shapeSet(sh))
	}
	return grew, nil
}

// commit records what a successful partial sync wrote.
func (np *nftPlane) commit(d *nftDiff, renders map[Name]*nftRendering, refs map[nftElem]int, added []*nftFamily) {
	for _, ff := range added {
		ff.markWritten()
	}
	for f, use := range d.use {
		ff := np.fams[f]
		for sh, delta := range use {
			ff.use[sh] += delta
		}
		for sh := range d.gone[f] {
			delete(ff.shapes, sh)
			delete(ff.use, sh)
			delete(ff.sets, sh.set())
		}
	}
	for e, n := range refs {
		if n == 0 {
			delete(np.fams[e.f].refs, e.refKey())
		} else {
			np.fams[e.f].refs[e.refKey()] = n
		}
	}
	for n, nr := range renders {
		if nr == nil {
			delete(np.written, n)
		} else {
			np.written[n] = nr
		}
	}
}

// addDisplaced renders the changed Services and adds to changed the
// holders of entries that one of them, coming before the holder by
// namespace and name, claims. It returns the renderings.
func (np *nftPlane) addDisplaced(changed map[Name]*Service) map[Name]*nftRendering {
	renders := map[Name]*nftRendering{}
	for more := true; more; {
		more = false
		for _, n := range sortedNames(changed) {
			s := changed[n]
			if s == nil || renders[n] != nil {
				continue
			}
			renders[n] = np.render(s)
			for e := range renders[n].elems {
				o, held := np.owners[entryOf(e)]
				if _, in := changed[o]; !held || in || !n.before(o) {
					continue
				}
				if os := np.env.wanted(o); os != nil {
					changed[o], more = os, true
				}
			}
		}
	}
	return renders
}

// addLosers adds to changed the Services that wanted one of the released
// entries while another held it.
func (np *nftPlane) addLosers(released []string, changed map[Name]*Service) {
	for _, id := range released {
		for n := range np.losers[id] {
			if _, ok := changed[n]; ok {
				continue
			}
			if s := np.env.wanted(n); s != nil {
				changed[n] = s
			}
		}
		delete(np.losers, id)
	}
}

// cleanup deletes the proxy's table in each family.
//
// Equivalent to: nft delete table ip NAME; nft delete table ip6 NAME
func (np *nftPlane) cleanup(ctx context.Context) (err error) {
	c, err := np.connect()
	if err != nil {
		return err
	}
	defer np.dropOnError(&err)
	for _, t := range np.tables() {
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := np.flush(c); err != nil {
		return fmt.Errorf("delete nftables table %q in netns %q: %w", np.env.r.chains.TableName(), np.ns, err)
	}
	np.written = map[Name]*nftRendering{}
	np.fams, np.owners, np.losers = nil, nil, nil
	return nil
}

func (np *nftPlane) stats() (services, endpoints int) {
	for _, r := range np.written {
		services++
		endpoints += r.endpoints
	}
	return services, endpoints
}
