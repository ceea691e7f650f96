package service

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nftRecorder stands in for the nf_tables netlink socket in unit tests:
// it takes the batch the proxy queues, applies it at Flush to a copy of
// its tables with the kernel's rules for the cases the proxy meets
// (EEXIST for an element added again with other data, ENOENT for a
// missing element, set or chain, EBUSY for a chain still referenced), and
// keeps the copy only when every operation succeeded, as one nf_tables
// transaction does. Dump prints the tables with rules in the notation of
// nft --debug=netlink, so tests compare the whole kernel state without
// root.
type nftRecorder struct {
	tables  map[string]*recTable // by "family name"
	pending []func(map[string]*recTable) error
	flushes int
}

type recTable struct {
	family string
	name   string
	sets   map[string]*recSet
	chains map[string]*recChain
}

type recSet struct {
	s     *nftables.Set
	elems map[string]string              // key -> value, printed
	raw   map[string]nftables.SetElement // key printed -> as sent
}

type recChain struct {
	c     *nftables.Chain
	rules [][]expr.Any
}

func newNftRecorder() *nftRecorder { return &nftRecorder{tables: map[string]*recTable{}} }

func famName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

func tableKey(t *nftables.Table) string { return famName(t.Family) + " " + t.Name }

func (r *nftRecorder) queue(op func(map[string]*recTable) error) { r.pending = append(r.pending, op) }

// table returns the table of t in ts, or an error naming what was asked.
func table(ts map[string]*recTable, t *nftables.Table, what string) (*recTable, error) {
	if rt := ts[tableKey(t)]; rt != nil {
		return rt, nil
	}
	return nil, fmt.Errorf("%s: table %s: %w", what, tableKey(t), unix.ENOENT)
}

func (r *nftRecorder) AddTable(t *nftables.Table) *nftables.Table {
	r.queue(func(ts map[string]*recTable) error {
		if ts[tableKey(t)] == nil {
			ts[tableKey(t)] = &recTable{family: famName(t.Family), name: t.Name, sets: map[string]*recSet{}, chains: map[string]*recChain{}}
		}
		return nil
	})
	return t
}

func (r *nftRecorder) DelTable(t *nftables.Table) {
	r.queue(func(ts map[string]*recTable) error {
		if _, err := table(ts, t, "delete table"); err != nil {
			return err
		}
		delete(ts, tableKey(t))
		return nil
	})
}

func (r *nftRecorder) AddSet(s *nftables.Set, es []nftables.SetElement) error {
	r.queue(func(ts map[string]*recTable) error {
		rt, err := table(ts, s.Table, "add set "+s.Name)
		if err != nil {
			return err
		}
		name := s.Name
		if s.Anonymous {
			name = fmt.Sprintf("__anon%d", s.ID)
		}
		if rt.sets[name] == nil {
			rt.sets[name] = &recSet{s: s, elems: map[string]string{}, raw: map[string]nftables.SetElement{}}
		}
		return addElems(rt.sets[name], es)
	})
	return nil
}

func (r *nftRecorder) DelSet(s *nftables.Set) {
	r.queue(func(ts map[string]*recTable) error {
		rt, err := table(ts, s.Table, "delete set "+s.Name)
		if err != nil {
			return err
		}
		if rt.sets[s.Name] == nil {
			return fmt.Errorf("delete set %s: %w", s.Name, unix.ENOENT)
		}
		delete(rt.sets, s.Name)
		return nil
	})
}

// set returns the named set of table t.
func set(ts map[string]*recTable, s *nftables.Set, what string) (*recSet, error) {
	rt, err := table(ts, s.Table, what)
	if err != nil {
		return nil, err
	}
	if rs := rt.sets[s.Name]; rs != nil {
		return rs, nil
	}
	return nil, fmt.Errorf("%s: set %s: %w", what, s.Name, unix.ENOENT)
}

func addElems(rs *recSet, es []nftables.SetElement) error {
	for _, e := range es {
		k, v := elemText(rs.s, e)
		if old, ok := rs.elems[k]; ok && old != v {
			return fmt.Errorf("add element %s to %s: %w", k, rs.s.Name, unix.EEXIST)
		}
		rs.elems[k] = v
		rs.raw[k] = e
	}
	return nil
}

func (r *nftRecorder) SetAddElements(s *nftables.Set, es []nftables.SetElement) error {
	r.queue(func(ts map[string]*recTable) error {
		rs, err := set(ts, s, "add elements")
		if err != nil {
			return err
		}
		return addElems(rs, es)
	})
	return nil
}

func (r *nftRecorder) SetDeleteElements(s *nftables.Set, es []nftables.SetElement) error {
	r.queue(func(ts map[string]*recTable) error {
		rs, err := set(ts, s, "delete elements")
		if err != nil {
			return err
		}
		for _, e := range es {
			k, _ := elemText(rs.s, e)
			if _, ok := rs.elems[k]; !ok {
				return fmt.Errorf("delete element %s from %s: %w", k, s.Name, unix.ENOENT)
			}
			delete(rs.elems, k)
			delete(rs.raw, k)
		}
		return nil
	})
	return nil
}

func (r *nftRecorder) AddChain(c *nftables.Chain) *nftables.Chain {
	r.queue(func(ts map[string]*recTable) error {
		rt, err := table(ts, c.Table, "add chain "+c.Name)
		if err != nil {
			return err
		}
		if rt.chains[c.Name] == nil {
			rt.chains[c.Name] = &recChain{c: c}
		}
		return nil
	})
	return c
}

// chain returns the named chain of table c.Table.
func chain(ts map[string]*recTable, c *nftables.Chain, what string) (*recTable, *recChain, error) {
	rt, err := table(ts, c.Table, what)
	if err != nil {
		return nil, nil, err
	}
	if rc := rt.chains[c.Name]; rc != nil {
		return rt, rc, nil
	}
	return nil, nil, fmt.Errorf("%s: chain %s: %w", what, c.Name, unix.ENOENT)
}

func (r *nftRecorder) FlushChain(c *nftables.Chain) {
	r.queue(func(ts map[string]*recTable) error {
		rt, rc, err := chain(ts, c, "flush chain")
		if err != nil {
			return err
		}
		// An anonymous set belongs to the rule that uses it.
		for _, rule := range rc.rules {
			for _, e := range rule {
				if l, ok := e.(*expr.Lookup); ok {
					if rs := rt.sets[fmt.Sprintf("__anon%d", l.SetID)]; rs != nil && rs.s.Anonymous {
						delete(rt.sets, fmt.Sprintf("__anon%d", l.SetID))
					}
				}
			}
		}
		rc.rules = nil
		return nil
	})
}

func (r *nftRecorder) DelChain(c *nftables.Chain) {
	r.queue(func(ts map[string]*recTable) error {
		rt, rc, err := chain(ts, c, "delete chain")
		if err != nil {
			return err
		}
		if len(rc.rules) > 0 || rt.references(c.Name) {
			return fmt.Errorf("delete chain %s: %w", c.Name, unix.EBUSY)
		}
		delete(rt.chains, c.Name)
		return nil
	})
}

// references reports whether a rule or a verdict map element of rt
// leads to the chain named name.
func (rt *recTable) references(name string) bool {
	for _, rc := range rt.chains {
		for _, rule := range rc.rules {
			for _, e := range rule {
				if v, ok := e.(*expr.Verdict); ok && v.Chain == name {
					return true
				}
			}
		}
	}
	for _, rs := range rt.sets {
		for _, v := range rs.elems {
			if strings.HasSuffix(v, " "+name) && (strings.HasPrefix(v, "goto ") || strings.HasPrefix(v, "jump ")) {
				return true
			}
		}
	}
	return false
}

func (r *nftRecorder) AddRule(rule *nftables.Rule) *nftables.Rule {
	r.queue(func(ts map[string]*recTable) error {
		_, rc, err := chain(ts, rule.Chain, "add rule")
		if err == nil {
			rc.rules = append(rc.rules, rule.Exprs)
		}
		return err
	})
	return rule
}

func (r *nftRecorder) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	rs, err := set(r.tables, s, "list elements")
	if err != nil {
		return nil, err
	}
	return slices.Collect(maps.Values(rs.raw)), nil
}

func (r *nftRecorder) GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error) {
	_, rc, err := chain(r.tables, c, "list rules")
	if err != nil {
		return nil, err
	}
	out := make([]*nftables.Rule, len(rc.rules))
	for i, e := range rc.rules {
		out[i] = &nftables.Rule{Table: t, Chain: c, Exprs: e}
	}
	return out, nil
}

// Flush applies the batch to a copy of the tables and keeps it only when
// every operation succeeded.
func (r *nftRecorder) Flush() error {
	ops := r.pending
	r.pending = nil
	next := r.copyTables()
	for _, op := range ops {
		if err := op(next); err != nil {
			return err
		}
	}
	r.tables = next
	r.flushes++
	return nil
}

func (r *nftRecorder) CloseLasting() error {
	r.pending = nil
	return nil
}

func (r *nftRecorder) copyTables() map[string]*recTable {
	out := map[string]*recTable{}
	for k, rt := range r.tables {
		c := &recTable{family: rt.family, name: rt.name, sets: map[string]*recSet{}, chains: map[string]*recChain{}}
		for n, rs := range rt.sets {
			c.sets[n] = &recSet{s: rs.s, elems: maps.Clone(rs.elems), raw: maps.Clone(rs.raw)}
		}
		for n, rc := range rt.chains {
			c.chains[n] = &recChain{c: rc.c, rules: slices.Clone(rc.rules)}
		}
		out[k] = c
	}
	return out
}

// Dump prints every table: sets and maps with their elements sorted,
// chains with their hooks and rules, all sorted by name.
func (r *nftRecorder) Dump() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(r.tables)) {
		rt := r.tables[k]
		fmt.Fprintf(&b, "table %s %s {\n", rt.family, rt.name)
		for _, n := range slices.Sorted(maps.Keys(rt.sets)) {
			if !rt.sets[n].s.Anonymous {
				rt.sets[n].dump(&b, n)
			}
		}
		for _, n := range slices.Sorted(maps.Keys(rt.chains)) {
			rt.dumpChain(&b, rt.chains[n])
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func (rs *recSet) dump(b *strings.Builder, name string) {
	s := rs.s
	typ := s.KeyType.Name
	if s.IsMap {
		typ += " : " + s.DataType.Name
	}
	var flags []string
	if s.Interval {
		flags = append(flags, "interval")
	}
	if s.Dynamic {
		flags = append(flags, "dynamic")
	}
	if s.HasTimeout {
		flags = append(flags, fmt.Sprintf("timeout %v", s.Timeout))
	}
	fmt.Fprintf(b, "\tset %s { type %s", name, typ)
	if len(flags) > 0 {
		fmt.Fprintf(b, "; %s", strings.Join(flags, ", "))
	}
	b.WriteString(" }\n")
	for _, k := range slices.Sorted(maps.Keys(rs.elems)) {
		if v := rs.elems[k]; v != "" {
			fmt.Fprintf(b, "\t\t%s : %s\n", k, v)
		} else {
			fmt.Fprintf(b, "\t\t%s\n", k)
		}
	}
}

func (rt *recTable) dumpChain(b *strings.Builder, rc *recChain) {
	c := rc.c
	fmt.Fprintf(b, "\tchain %s {", c.Name)
	if c.Hooknum != nil {
		fmt.Fprintf(b, " type %s hook %d priority %d;", c.Type, *c.Hooknum, *c.Priority)
	}
	b.WriteString("\n")
	for _, rule := range rc.rules {
		b.WriteString("\t\t")
		for _, e := range rule {
			fmt.Fprintf(b, "[ %s ] ", rt.exprText(e))
		}
		b.WriteString("\n")
	}
	b.WriteString("\t}\n")
}

// exprText prints one expression as nft --debug=netlink (libnftnl) does,
// with an anonymous set's elements in place of its generated name.
func (rt *recTable) exprText(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Payload:
		bases := map[expr.PayloadBase]string{expr.PayloadBaseLLHeader: "link", expr.PayloadBaseNetworkHeader: "network", expr.PayloadBaseTransportHeader: "transport"}
		return fmt.Sprintf("payload load %db @ %s header + %d => reg %d", e.Len, bases[e.Base], e.Offset, e.DestRegister)
	case *expr.Meta:
		if e.SourceRegister {
			return fmt.Sprintf("meta set %s with reg %d", metaKey(e.Key), e.Register)
		}
		return fmt.Sprintf("meta load %s => reg %d", metaKey(e.Key), e.Register)
	case *expr.Lookup:
		name := e.SetName
		if rs := rt.sets[fmt.Sprintf("__anon%d", e.SetID)]; rs != nil && rs.s.Anonymous {
			name = rs.inline()
		}
		if e.IsDestRegSet {
			return fmt.Sprintf("lookup reg %d set %s dreg %d", e.SourceRegister, name, e.DestRegister)
		}
		if e.Invert {
			return fmt.Sprintf("lookup reg %d set %s invert", e.SourceRegister, name)
		}
		return fmt.Sprintf("lookup reg %d set %s", e.SourceRegister, name)
	case *expr.Numgen:
		return fmt.Sprintf("numgen reg %d = random mod %d", e.Register, e.Modulus)
	case *expr.NAT:
		return fmt.Sprintf("nat dnat family %d addr_min reg %d proto_min reg %d", e.Family, e.RegAddrMin, e.RegProtoMin)
	case *expr.Immediate:
		return fmt.Sprintf("immediate reg %d 0x%x", e.Register, e.Data)
	case *expr.Verdict:
		return "immediate reg 0 " + verdictText(e)
	case *expr.Cmp:
		ops := map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}
		return fmt.Sprintf("cmp %s reg %d 0x%x", ops[e.Op], e.Register, e.Data)
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise reg %d = ( reg %d & 0x%x ) ^ 0x%x", e.DestRegister, e.SourceRegister, e.Mask, e.Xor)
	case *expr.Fib:
		dir := "daddr"
		if e.FlagSADDR {
			dir = "saddr"
		}
		return fmt.Sprintf("fib %s type => reg %d", dir, e.Register)
	case *expr.Ct:
		keys := map[expr.CtKey]string{expr.CtKeySTATE: "state", expr.CtKeySTATUS: "status"}
		return fmt.Sprintf("ct load %s => reg %d", keys[e.Key], e.Register)
	case *expr.Reject:
		return fmt.Sprintf("reject type %d code %d", e.Type, e.Code)
	case *expr.Masq:
		return fmt.Sprintf("masq fully-random %v", e.FullyRandom)
	case *expr.Dynset:
		return fmt.Sprintf("dynset update reg_key %d set %s", e.SrcRegKey, e.SetName)
	}
	return fmt.Sprintf("%T %+v", e, e)
}

func metaKey(k expr.MetaKey) string {
	switch k {
	case expr.MetaKeyL4PROTO:
		return "l4proto"
	case expr.MetaKeyMARK:
		return "mark"
	}
	return fmt.Sprintf("key %d", k)
}

// inline prints an anonymous set as its elements.
func (rs *recSet) inline() string {
	var es []string
	for _, k := range slices.Sorted(maps.Keys(rs.elems)) {
		es = append(es, k+" : "+rs.elems[k])
	}
	return "{ " + strings.Join(es, ", ") + " }"
}
