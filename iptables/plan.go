package iptables

import (
	"slices"
	"strconv"
	"strings"
)

// tableKey identifies one table of one family.
type tableKey struct {
	f Family
	t Table
}

// stateNeeded returns the tables whose current contents the plan needs.
func (tx *Transaction) stateNeeded() []tableKey {
	var keys []tableKey
	for _, op := range tx.ops {
		if op.kind == opEnsure || op.kind == opRemove || op.kind == opPrune {
			k := tableKey{op.chain.Family, op.chain.Table}
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// restorePlan is what one iptables-restore call gets: per table, the
// ':CHAIN' lines, then the rule lines, then the '-X' lines.
type restorePlan struct {
	family Family
	tables []*tablePlan
	lines  int
}

type tablePlan struct {
	table   Table
	zero    bool     // start with -Z (ZeroCounters)
	declare []string // chain names to create-or-flush
	rules   []string // "-A C spec", "-I C n spec", "-D C spec"
	remove  []string // chain names to delete at the end
	// sets of declare and remove: a transaction may name tens of
	// thousands of chains, so membership must not scan the lists.
	declareSet, removeSet map[string]bool
}

func (p *restorePlan) table(t Table) *tablePlan {
	for _, tp := range p.tables {
		if tp.table == t {
			return tp
		}
	}
	tp := &tablePlan{table: t}
	p.tables = append(p.tables, tp)
	return tp
}

func (tp *tablePlan) addDeclare(name string) {
	if tp.declareSet == nil {
		tp.declareSet = map[string]bool{}
	}
	if !tp.declareSet[name] {
		tp.declareSet[name] = true
		tp.declare = append(tp.declare, name)
	}
}

func (tp *tablePlan) addRemove(name string) {
	if tp.removeSet == nil {
		tp.removeSet = map[string]bool{}
	}
	if !tp.removeSet[name] {
		tp.removeSet[name] = true
		tp.remove = append(tp.remove, name)
	}
}

// smallestFirst orders the tables so the largest is applied last: it is
// the one Kernel.Run need not save beforehand to be able to roll back.
func (p *restorePlan) smallestFirst() {
	size := func(tp *tablePlan) int { return len(tp.declare) + len(tp.rules) + len(tp.remove) }
	slices.SortStableFunc(p.tables, func(a, b *tablePlan) int { return size(a) - size(b) })
}

// text renders the plan as iptables-restore input.
func (p *restorePlan) text() string {
	var b strings.Builder
	b.Grow(p.lines * 64)
	for _, tp := range p.tables {
		b.WriteString("*")
		b.WriteString(string(tp.table))
		b.WriteByte('\n')
		if tp.zero {
			b.WriteString("-Z\n")
		}
		for _, c := range tp.declare {
			b.WriteString(":" + c + " - [0:0]\n")
		}
		for _, r := range tp.rules {
			b.WriteString(r)
			b.WriteByte('\n')
		}
		for _, c := range tp.remove {
			b.WriteString("-X " + c + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func (p *restorePlan) empty() bool {
	for _, tp := range p.tables {
		if len(tp.declare)+len(tp.rules)+len(tp.remove) > 0 {
			return false
		}
	}
	return true
}

// plan turns tx into one restore plan per family. state holds the current
// contents of the tables stateNeeded lists (nil for an empty table).
// unchanged reports whether a declared chain may be skipped.
func (tx *Transaction) plan(state map[tableKey]*TableRules, unchanged func(Chain, uint64) bool) (map[Family]*restorePlan, error) {
	if tx.err != nil {
		return nil, tx.err
	}
	pl := &planner{
		state:     state,
		unchanged: unchanged,
		plans:     map[Family]*restorePlan{},
		rewritten: tx.rewritten(),
		deleted:   map[Chain]bool{},
	}
	for i := range tx.ops {
		op := &tx.ops[i]
		pl.add(pl.table(op.chain.Family, op.chain.Table), op)
	}
	pl.dropReferences()
	pl.finish(tx.zeroCounters)
	return pl.plans, nil
}

// planner is the state of one plan call.
type planner struct {
	state     map[tableKey]*TableRules
	unchanged func(Chain, uint64) bool
	plans     map[Family]*restorePlan
	rewritten map[Chain]bool // see Transaction.rewritten
	deleted   map[Chain]bool // chains the plan deletes, by DeleteChain or Prune
}

// rewritten returns the chains tx declares, flushes or deletes: rules there
// need no -D. A declared chain skipped as unchanged is among them, so Prune
// leaves it alone.
func (tx *Transaction) rewritten() map[Chain]bool {
	rewritten := map[Chain]bool{}
	for _, op := range tx.ops {
		if op.kind == opDeclare || op.kind == opFlush || op.kind == opDeleteChain {
			rewritten[op.chain] = true
		}
	}
	return rewritten
}

// table returns the plan of table t of family f, creating it (and the
// family's plan) on first use: tables are written in that order.
func (pl *planner) table(f Family, t Table) *tablePlan {
	p := pl.plans[f]
	if p == nil {
		p = &restorePlan{family: f}
		pl.plans[f] = p
	}
	return p.table(t)
}

// current returns the chain c as the state has it, or nil.
func (pl *planner) current(c Chain) *ChainRules {
	return pl.state[tableKey{c.Family, c.Table}].Chain(c.Name)
}

// add plans op into tp, the plan of its table.
func (pl *planner) add(tp *tablePlan, op *txOp) {
	name := op.chain.Name
	switch op.kind {
	case opDeclare:
		if pl.unchanged != nil && pl.unchanged(op.chain, op.hash) {
			return
		}
		tp.addDeclare(name)
		for _, s := range op.specs {
			tp.rules = append(tp.rules, "-A "+name+" "+s)
		}
	case opAppend:
		for _, s := range op.specs {
			tp.rules = append(tp.rules, "-A "+name+" "+s)
		}
	case opInsert:
		for i, s := range op.specs {
			tp.rules = append(tp.rules, "-I "+name+" "+strconv.Itoa(op.pos+i)+" "+s)
		}
	case opDelete:
		for _, s := range op.specs {
			tp.rules = append(tp.rules, "-D "+name+" "+s)
		}
	case opFlush:
		tp.addDeclare(name)
	case opDeleteChain:
		tp.addDeclare(name)
		tp.addRemove(name)
		pl.deleted[op.chain] = true
	case opEnsure:
		pl.ensure(tp, op)
	case opRemove:
		pl.remove(tp, op)
	case opPrune:
		pl.prune(tp, op)
	}
}

// ensure adds the rule of an EnsureRule when its chain lacks it and
// deletes the extra copies when it has several.
func (pl *planner) ensure(tp *tablePlan, op *txOp) {
	name, spec := op.chain.Name, op.specs[0]
	n := 0
	if cur := pl.current(op.chain); cur != nil {
		for _, r := range cur.Rules {
			if r == spec {
				n++
			}
		}
	}
	switch {
	case n == 0 && op.pos == 1:
		tp.rules = append(tp.rules, "-I "+name+" 1 "+spec)
	case n == 0:
		tp.rules = append(tp.rules, "-A "+name+" "+spec)
	}
	for ; n > 1; n-- {
		tp.rules = append(tp.rules, "-D "+name+" "+spec)
	}
}

// remove deletes every copy of the rule of a RemoveRule from its chain.
func (pl *planner) remove(tp *tablePlan, op *txOp) {
	if pl.rewritten[op.chain] {
		return
	}
	if cur := pl.current(op.chain); cur != nil {
		for _, r := range cur.Rules {
			if r == op.specs[0] {
				tp.rules = append(tp.rules, "-D "+op.chain.Name+" "+r)
			}
		}
	}
}

// prune deletes the chains op.owned claims that tx neither writes nor
// deletes itself.
func (pl *planner) prune(tp *tablePlan, op *txOp) {
	cur := pl.state[tableKey{op.chain.Family, op.chain.Table}]
	if cur == nil {
		return
	}
	for _, c := range cur.Chains {
		ch := Chain{op.chain.Family, op.chain.Table, c.Name}
		if IsBuiltin(c.Name) || !op.owned(c.Name) || pl.rewritten[ch] || pl.deleted[ch] {
			continue
		}
		tp.addDeclare(c.Name)
		tp.addRemove(c.Name)
		pl.deleted[ch] = true
	}
}

// dropReferences deletes the rules jumping to deleted chains from the
// chains tx does not rewrite, so that -X succeeds.
func (pl *planner) dropReferences() {
	for k, st := range pl.state {
		if st == nil {
			continue
		}
		tp := pl.table(k.f, k.t)
		for _, c := range st.Chains {
			ch := Chain{k.f, k.t, c.Name}
			if pl.rewritten[ch] || pl.deleted[ch] {
				continue
			}
			for _, r := range c.Rules {
				if tgt := TargetOf(r); tgt != "" && pl.deleted[Chain{k.f, k.t, tgt}] && !slices.Contains(tp.rules, "-D "+c.Name+" "+r) {
					tp.rules = append(tp.rules, "-D "+c.Name+" "+r)
				}
			}
		}
	}
}

// finish sets what the writer needs of every table plan: whether
// it starts with -Z, and its size.
func (pl *planner) finish(zero bool) {
	for _, p := range pl.plans {
		for _, tp := range p.tables {
			tp.zero = zero
			p.lines += len(tp.declare) + len(tp.rules) + len(tp.remove) + 2
		}
	}
}

// TargetOf returns the chain or target a saved rule spec jumps to ("-j X" or
// "-g X" at its end), or "".
func TargetOf(spec string) string {
	args, err := splitArgs(spec)
	if err != nil {
		return ""
	}
	for i := len(args) - 2; i >= 0; i-- {
		if args[i] == "-j" || args[i] == "-g" {
			return args[i+1]
		}
	}
	return ""
}
