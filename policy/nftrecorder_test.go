package policy

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// recorder stands in for the nf_tables netlink socket in unit tests: it
// takes the batch the enforcer queues and applies it at Flush to a copy
// of its one table, with the kernel's answers for the cases the enforcer
// meets (ENOENT for a missing table, set, chain or element, EEXIST for an
// element added twice or an interval overlapping another, EBUSY for a
// chain or set still referenced), keeping the copy only when every
// operation succeeded, as one nf_tables transaction does. Dump prints the
// table; trace runs a packet through its base chains.
type recorder struct {
	table   *recTable // nil: no table
	pending []func(**recTable) error
	flushes int
}

type recTable struct {
	sets    map[string]*recSet
	chains  map[string]*recChain
	objects map[string]uint64 // counters: packets
}

type recSet struct {
	s     *nftables.Set
	elems map[string]nftables.SetElement // by elemID
}

type recChain struct {
	c     *nftables.Chain
	rules []*nftables.Rule
}

func elemID(e nftables.SetElement) string {
	if e.IntervalEnd {
		return string(e.Key) + "/end"
	}
	return string(e.Key)
}

func (r *recorder) queue(op func(**recTable) error) { r.pending = append(r.pending, op) }

func need(t *recTable, what string) error {
	if t == nil {
		return fmt.Errorf("%s: %w", what, unix.ENOENT)
	}
	return nil
}

func (r *recorder) AddTable(t *nftables.Table) *nftables.Table {
	r.queue(func(tp **recTable) error {
		if *tp == nil {
			*tp = &recTable{sets: map[string]*recSet{}, chains: map[string]*recChain{}, objects: map[string]uint64{}}
		}
		return nil
	})
	return t
}

func (r *recorder) DelTable(*nftables.Table) {
	r.queue(func(tp **recTable) error {
		if err := need(*tp, "delete table"); err != nil {
			return err
		}
		*tp = nil
		return nil
	})
}

func (r *recorder) AddObj(o nftables.Obj) nftables.Obj {
	n := o.(*nftables.NamedObj)
	r.queue(func(tp **recTable) error {
		if err := need(*tp, "add object"); err != nil {
			return err
		}
		(*tp).objects[n.Name] = n.Obj.(*expr.Counter).Packets
		return nil
	})
	return o
}

func (r *recorder) AddSet(s *nftables.Set, es []nftables.SetElement) error {
	r.queue(func(tp **recTable) error {
		if err := need(*tp, "add set"); err != nil {
			return err
		}
		if (*tp).sets[s.Name] == nil {
			(*tp).sets[s.Name] = &recSet{s: s, elems: map[string]nftables.SetElement{}}
		}
		return (*tp).sets[s.Name].add(es, *tp)
	})
	return nil
}

func (rs *recSet) add(es []nftables.SetElement, t *recTable) error {
	for _, e := range es {
		if _, ok := rs.elems[elemID(e)]; ok {
			return fmt.Errorf("add element %x to %s: %w", e.Key, rs.s.Name, unix.EEXIST)
		}
		if e.VerdictData != nil && t.chains[e.VerdictData.Chain] == nil {
			return fmt.Errorf("element of %s leads to chain %s: %w", rs.s.Name, e.VerdictData.Chain, unix.ENOENT)
		}
		rs.elems[elemID(e)] = e
	}
	return nil
}

func (r *recorder) DelSet(s *nftables.Set) {
	r.queue(func(tp **recTable) error {
		t := *tp
		if err := need(t, "delete set"); err != nil {
			return err
		}
		if t.sets[s.Name] == nil {
			return fmt.Errorf("delete set %s: %w", s.Name, unix.ENOENT)
		}
		for _, c := range t.chains {
			for _, rule := range c.rules {
				for _, e := range rule.Exprs {
					if l, ok := e.(*expr.Lookup); ok && l.SetName == s.Name {
						return fmt.Errorf("delete set %s used by chain %s: %w", s.Name, c.c.Name, unix.EBUSY)
					}
				}
			}
		}
		delete(t.sets, s.Name)
		return nil
	})
}

func (r *recorder) set(tp **recTable, s *nftables.Set, what string) (*recSet, error) {
	if err := need(*tp, what); err != nil {
		return nil, err
	}
	if rs := (*tp).sets[s.Name]; rs != nil {
		return rs, nil
	}
	return nil, fmt.Errorf("%s: set %s: %w", what, s.Name, unix.ENOENT)
}

func (r *recorder) SetAddElements(s *nftables.Set, es []nftables.SetElement) error {
	r.queue(func(tp **recTable) error {
		rs, err := r.set(tp, s, "add elements")
		if err != nil {
			return err
		}
		return rs.add(es, *tp)
	})
	return nil
}

func (r *recorder) SetDeleteElements(s *nftables.Set, es []nftables.SetElement) error {
	r.queue(func(tp **recTable) error {
		rs, err := r.set(tp, s, "delete elements")
		if err != nil {
			return err
		}
		for _, e := range es {
			if _, ok := rs.elems[elemID(e)]; !ok {
				return fmt.Errorf("delete element %x from %s: %w", e.Key, s.Name, unix.ENOENT)
			}
			delete(rs.elems, elemID(e))
		}
		return nil
	})
	return nil
}

func (r *recorder) AddChain(c *nftables.Chain) *nftables.Chain {
	r.queue(func(tp **recTable) error {
		if err := need(*tp, "add chain"); err != nil {
			return err
		}
		if (*tp).chains[c.Name] == nil {
			(*tp).chains[c.Name] = &recChain{c: c}
		}
		return nil
	})
	return c
}

func (r *recorder) chain(tp **recTable, c *nftables.Chain, what string) (*recChain, error) {
	if err := need(*tp, what); err != nil {
		return nil, err
	}
	if rc := (*tp).chains[c.Name]; rc != nil {
		return rc, nil
	}
	return nil, fmt.Errorf("%s: chain %s: %w", what, c.Name, unix.ENOENT)
}

func (r *recorder) FlushChain(c *nftables.Chain) {
	r.queue(func(tp **recTable) error {
		rc, err := r.chain(tp, c, "flush chain")
		if err == nil {
			rc.rules = nil
		}
		return err
	})
}

func (r *recorder) DelChain(c *nftables.Chain) {
	r.queue(func(tp **recTable) error {
		rc, err := r.chain(tp, c, "delete chain")
		if err != nil {
			return err
		}
		if len(rc.rules) > 0 || (*tp).references(c.Name) {
			return fmt.Errorf("delete chain %s: %w", c.Name, unix.EBUSY)
		}
		delete((*tp).chains, c.Name)
		return nil
	})
}

// references reports whether a rule or a verdict map element leads to
// the chain named name.
func (t *recTable) references(name string) bool {
	for _, rc := range t.chains {
		for _, rule := range rc.rules {
			for _, e := range rule.Exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Chain == name {
					return true
				}
			}
		}
	}
	for _, rs := range t.sets {
		for _, e := range rs.elems {
			if e.VerdictData != nil && e.VerdictData.Chain == name {
				return true
			}
		}
	}
	return false
}

func (r *recorder) AddRule(rule *nftables.Rule) *nftables.Rule {
	r.queue(func(tp **recTable) error {
		rc, err := r.chain(tp, rule.Chain, "add rule")
		if err != nil {
			return err
		}
		for _, e := range rule.Exprs {
			switch e := e.(type) {
			case *expr.Lookup:
				if (*tp).sets[e.SetName] == nil {
					return fmt.Errorf("rule of %s reads set %s: %w", rule.Chain.Name, e.SetName, unix.ENOENT)
				}
			case *expr.Verdict:
				if e.Chain != "" && (*tp).chains[e.Chain] == nil {
					return fmt.Errorf("rule of %s leads to chain %s: %w", rule.Chain.Name, e.Chain, unix.ENOENT)
				}
			case *expr.Objref:
				if _, ok := (*tp).objects[e.Name]; !ok {
					return fmt.Errorf("rule of %s counts in %s: %w", rule.Chain.Name, e.Name, unix.ENOENT)
				}
			}
		}
		rc.rules = append(rc.rules, rule)
		return nil
	})
	return rule
}

func (r *recorder) GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error) {
	rc, err := r.chain(&r.table, c, "list rules")
	if err != nil {
		return nil, err
	}
	return slices.Clone(rc.rules), nil
}

func (r *recorder) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	rs, err := r.set(&r.table, s, "list elements")
	if err != nil {
		return nil, err
	}
	return slices.Collect(maps.Values(rs.elems)), nil
}

func (r *recorder) GetObjects(t *nftables.Table) ([]nftables.Obj, error) {
	if err := need(r.table, "list objects"); err != nil {
		return nil, err
	}
	var out []nftables.Obj
	for name, n := range r.table.objects {
		out = append(out, &nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{Packets: n}})
	}
	return out, nil
}

// Flush applies the batch to a copy of the table and keeps it only when
// every operation succeeded; interval sets must then hold disjoint
// intervals, as the kernel's checks keep them.
func (r *recorder) Flush() error {
	ops := r.pending
	r.pending = nil
	next := r.table.copy()
	for _, op := range ops {
		if err := op(&next); err != nil {
			return err
		}
	}
	if next != nil {
		for _, rs := range next.sets {
			if err := rs.checkIntervals(); err != nil {
				return err
			}
		}
	}
	r.table = next
	r.flushes++
	return nil
}

// checkIntervals reports starts and ends of an interval set that do not
// alternate (an overlap, or an end without its start).
func (rs *recSet) checkIntervals() error {
	if !rs.s.Interval || rs.s.Concatenation {
		return nil
	}
	es := slices.SortedFunc(maps.Values(rs.elems), func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		if a.IntervalEnd {
			return -1 // an end before a start at the same key
		}
		return 1
	})
	open := false
	for _, e := range es {
		if e.IntervalEnd == open {
			open = !open
			continue
		}
		return fmt.Errorf("set %s: interval element %x overlaps: %w", rs.s.Name, e.Key, unix.EEXIST)
	}
	return nil
}

func (r *recorder) CloseLasting() error {
	r.pending = nil
	return nil
}

func (t *recTable) copy() *recTable {
	if t == nil {
		return nil
	}
	c := &recTable{sets: map[string]*recSet{}, chains: map[string]*recChain{}, objects: maps.Clone(t.objects)}
	for n, rs := range t.sets {
		c.sets[n] = &recSet{s: rs.s, elems: maps.Clone(rs.elems)}
	}
	for n, rc := range t.chains {
		c.chains[n] = &recChain{c: rc.c, rules: slices.Clone(rc.rules)}
	}
	return c
}

// Dump prints the table: sets with their elements sorted, chains with
// their hooks, rules (each expression with its fields) and comments.
func (r *recorder) Dump() string {
	if r.table == nil {
		return "no table\n"
	}
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(r.table.objects)) {
		fmt.Fprintf(&b, "counter %s\n", n)
	}
	for _, n := range slices.Sorted(maps.Keys(r.table.sets)) {
		rs := r.table.sets[n]
		fmt.Fprintf(&b, "set %s { type %s; interval %v; map %v }\n", n, rs.s.KeyType.Name, rs.s.Interval, rs.s.IsMap)
		var lines []string
		for _, e := range rs.elems {
			l := fmt.Sprintf("\t%x", e.Key)
			if e.IntervalEnd {
				l += " end"
			}
			if len(e.KeyEnd) > 0 {
				l += fmt.Sprintf(" - %x", e.KeyEnd)
			}
			if e.VerdictData != nil {
				l += " : goto " + e.VerdictData.Chain
			}
			lines = append(lines, l)
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(lines, "\n"))
		b.WriteString("\n")
	}
	for _, n := range slices.Sorted(maps.Keys(r.table.chains)) {
		rc := r.table.chains[n]
		fmt.Fprintf(&b, "chain %s {", n)
		if rc.c.Hooknum != nil {
			fmt.Fprintf(&b, " hook %d priority %d;", *rc.c.Hooknum, *rc.c.Priority)
		}
		b.WriteString("\n")
		for _, rule := range rc.rules {
			b.WriteString("\t")
			for _, e := range rule.Exprs {
				fmt.Fprintf(&b, "[%T %+v] ", e, reflect.ValueOf(e).Elem().Interface())
			}
			if c, ok := userdata.GetString(rule.UserData, userdata.TypeComment); ok {
				fmt.Fprintf(&b, "comment %q", c)
			}
			b.WriteString("\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// rules counts the rules of every chain.
func (r *recorder) rules() int {
	n := 0
	if r.table != nil {
		for _, rc := range r.table.chains {
			n += len(rc.rules)
		}
	}
	return n
}
