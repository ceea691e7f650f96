package iptables

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/podnet/podnet"
)

// Fake is an in-memory Backend for tests of code that programs iptables
// rules.
// Run plans a transaction exactly as Kernel does, then applies the
// resulting iptables-restore lines to a copy of its tables with restore's
// semantics (a missing chain or rule, a chain still referenced, a jump to
// nowhere fail) and keeps the copy only when every line applied. It does
// not model the kernel's per-hook checks beyond NAT targets being allowed
// only in the nat table.
//
// The zero Fake is not usable; call NewFake. A Fake is safe for concurrent
// use.
type Fake struct {
	mu   sync.Mutex
	sets map[Family]*Ruleset
	runs int
	// lastText is the restore input of the last Run, per family.
	lastText map[Family]string
}

var _ Backend = (*Fake)(nil)

// NewFake returns a Fake with empty tables.
func NewFake() *Fake {
	return &Fake{
		sets:     map[Family]*Ruleset{IPv4: {Family: IPv4}, IPv6: {Family: IPv6}},
		lastText: map[Family]string{},
	}
}

// Load replaces the tables of family f with the contents of iptables-save
// output, to start a test from a known (e.g. foreign) state.
func (fk *Fake) Load(f Family, saved string) error {
	rs, err := ParseSave(f, saved)
	if err != nil {
		return err
	}
	for _, t := range rs.Tables {
		fakeSort(t)
	}
	fk.mu.Lock()
	fk.sets[f] = rs
	fk.mu.Unlock()
	return nil
}

// Dump returns the tables of family f in iptables-save format without
// counters or comments, tables sorted by name: stable text for golden
// tests.
func (fk *Fake) Dump(f Family) string {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	rs := fk.sets[f].clone()
	sort.Slice(rs.Tables, func(i, j int) bool { return rs.Tables[i].Name < rs.Tables[j].Name })
	return rs.String()
}

// Runs returns how many transactions were applied successfully.
func (fk *Fake) Runs() int {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.runs
}

// LastText returns the iptables-restore input the last Run planned for
// family f ("" if none).
func (fk *Fake) LastText(f Family) string {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.lastText[f]
}

// Run applies tx to a copy of the tables and commits the copy on success.
func (fk *Fake) Run(ctx context.Context, tx *Transaction) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fk.mu.Lock()
	defer fk.mu.Unlock()
	state := map[tableKey]*TableRules{}
	for _, k := range tx.stateNeeded() {
		state[k] = fk.sets[k.f].Table(k.t)
	}
	plans, err := tx.plan(state, nil)
	if err != nil {
		return fmt.Errorf("apply transaction in fake: %w", err)
	}
	next := map[Family]*Ruleset{}
	for f, p := range plans {
		rs := fk.sets[f].clone()
		if err := applyPlan(rs, p); err != nil {
			return &podnet.OpError{Op: "apply transaction to", Kind: f.String() + " tables", NetNS: "fake", Err: err}
		}
		next[f] = rs
	}
	clear(fk.lastText)
	for f, rs := range next {
		fk.sets[f] = rs
		fk.lastText[f] = plans[f].text()
	}
	fk.runs++
	return nil
}

// Save returns a copy of table t of family f.
func (fk *Fake) Save(ctx context.Context, f Family, t Table) (*TableRules, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fk.mu.Lock()
	defer fk.mu.Unlock()
	rs := fk.sets[f]
	if rs == nil {
		return nil, podnet.Invalid("family %v", f)
	}
	if tr := rs.Table(t); tr != nil {
		return (&Ruleset{Tables: []*TableRules{tr}}).clone().Tables[0], nil
	}
	return emptyTable(t), nil
}

// Check reports whether r is in chain c; a missing chain reads as false,
// as it does from Kernel.
func (fk *Fake) Check(c Chain, r Rule) (bool, error) {
	spec, err := r.Spec(c.Family)
	if err != nil {
		return false, err
	}
	fk.mu.Lock()
	defer fk.mu.Unlock()
	rs := fk.sets[c.Family]
	if rs == nil {
		return false, podnet.Invalid("chain %q: family %v", c.Name, c.Family)
	}
	ch := rs.Table(c.Table).Chain(c.Name)
	return ch != nil && slices.Contains(ch.Rules, spec), nil
}

// fakeSort orders chains as iptables-save does: built-ins in their fixed
// order, then user chains by name.
func fakeSort(t *TableRules) {
	rank := func(name string) int {
		if i := slices.Index(builtinsOf(t.Name), name); i >= 0 {
			return i
		}
		return 100
	}
	sort.SliceStable(t.Chains, func(i, j int) bool {
		ri, rj := rank(t.Chains[i].Name), rank(t.Chains[j].Name)
		if ri != rj {
			return ri < rj
		}
		return ri == 100 && t.Chains[i].Name < t.Chains[j].Name
	})
}

var standardTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "QUEUE": true, "NFQUEUE": true,
	"MASQUERADE": true, "SNAT": true, "DNAT": true, "MARK": true, "LOG": true, "CONNMARK": true,
}

// applyPlan interprets restore lines on rs.
func applyPlan(rs *Ruleset, p *restorePlan) error {
	for _, tp := range p.tables {
		t := rs.Table(tp.table)
		if t == nil {
			t = emptyTable(tp.table)
			rs.Tables = append(rs.Tables, t)
		}
		line := 0
		fail := func(format string, a ...any) error {
			return fmt.Errorf("table %q line %d: %w", tp.table, line, fmt.Errorf(format, a...))
		}
		for _, name := range tp.declare {
			line++
			if c := t.Chain(name); c != nil {
				c.Rules = nil
			} else {
				t.Chains = append(t.Chains, &ChainRules{Name: name})
			}
		}
		for _, l := range tp.rules {
			line++
			verb, rest, _ := strings.Cut(l, " ")
			name, spec, _ := strings.Cut(rest, " ")
			c := t.Chain(name)
			if c == nil {
				return fail("chain %q does not exist: %w", name, podnet.ErrNotFound)
			}
			if verb != "-D" {
				if tgt := TargetOf(spec); tgt != "" && !standardTargets[tgt] && t.Chain(tgt) == nil {
					return fail("chain %q does not exist: %w", tgt, podnet.ErrNotFound)
				}
				if tgt := TargetOf(spec); (tgt == "DNAT" || tgt == "SNAT" || tgt == "MASQUERADE") && tp.table != TableNAT {
					return fail("target %s is only valid in table nat: %w", tgt, podnet.ErrInvalid)
				}
			}
			switch verb {
			case "-A":
				c.Rules = append(c.Rules, spec)
			case "-I":
				posStr, s, _ := strings.Cut(spec, " ")
				pos, err := strconv.Atoi(posStr)
				if err != nil || pos < 1 || pos > len(c.Rules)+1 {
					return fail("index of insertion too big: %w", podnet.ErrInvalid)
				}
				c.Rules = slices.Insert(c.Rules, pos-1, s)
			case "-D":
				i := slices.Index(c.Rules, spec)
				if i < 0 {
					return fail("rule %q not in chain %q (does a matching rule exist in that chain?): %w", spec, name, podnet.ErrNotFound)
				}
				c.Rules = slices.Delete(c.Rules, i, i+1)
			default:
				return fail("unknown command %q", verb)
			}
		}
		for _, name := range tp.remove {
			line++
			i := slices.IndexFunc(t.Chains, func(c *ChainRules) bool { return c.Name == name })
			switch {
			case i < 0:
				return fail("chain %q does not exist: %w", name, podnet.ErrNotFound)
			case t.Chains[i].Policy != "":
				return fail("cannot delete built-in chain %q: %w", name, podnet.ErrInvalid)
			case len(t.Chains[i].Rules) > 0:
				return fail("chain %q is not empty: %w", name, podnet.ErrConflict)
			}
			for _, c := range t.Chains {
				for _, r := range c.Rules {
					if TargetOf(r) == name {
						return fail("chain %q is referenced by chain %q: %w", name, c.Name, podnet.ErrConflict)
					}
				}
			}
			t.Chains = slices.Delete(t.Chains, i, i+1)
		}
		fakeSort(t)
	}
	return nil
}
