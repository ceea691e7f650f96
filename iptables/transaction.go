package iptables

import (
	"context"
	"fmt"
	"hash/fnv"

	"github.com/podnet/podnet"
)

// Backend applies transactions and reads tables. Kernel is the real one,
// acting in a network namespace; Fake keeps the tables in memory.
type Backend interface {
	// Run applies tx atomically: one iptables-restore --noflush per family.
	Run(ctx context.Context, tx *Transaction) error
	// Save reads one table.
	//
	// Equivalent to: iptables-save -t TABLE
	Save(ctx context.Context, f Family, t Table) (*TableRules, error)
	// Check reports whether rule is in chain c; a missing chain reads as
	// false.
	//
	// Equivalent to: iptables -t TABLE -C CHAIN RULE
	Check(c Chain, r Rule) (bool, error)
}

// Transaction is a set of changes to iptables tables applied atomically by
// Backend.Run: one iptables-restore --noflush per family, so either all of
// it is in the kernel or none of it. Builder methods never fail; the first
// invalid input is reported by Run, which then changes nothing.
//
// Chains are owned by prefix: Declare writes an owned chain's full
// contents, Prune removes owned chains no longer declared, and EnsureRule /
// RemoveRule place single rules (typically jumps) in chains the caller does
// not own without touching anything else there.
//
// The zero Transaction is empty and ready to use. A Transaction is not safe
// for concurrent use while being built.
type Transaction struct {
	ops           []txOp
	err           error
	skipUnchanged bool
	zeroCounters  bool
}

type opKind uint8

const (
	opDeclare opKind = iota
	opAppend
	opInsert
	opDelete
	opFlush
	opDeleteChain
	opEnsure
	opRemove
	opPrune
)

type txOp struct {
	kind  opKind
	chain Chain
	pos   int      // opInsert: 1-based position; opEnsure: 1 top, 0 bottom
	specs []string // rendered rules
	owned Owner    // opPrune
	hash  uint64   // opDeclare: hash of specs
}

// NewTransaction returns an empty transaction.
func NewTransaction() *Transaction { return &Transaction{} }

// Err returns the first error recorded while building tx.
func (tx *Transaction) Err() error { return tx.err }

// Len returns the number of operations in tx.
func (tx *Transaction) Len() int { return len(tx.ops) }

// declared returns the chains tx declares.
func (tx *Transaction) declared() map[Chain]bool {
	m := map[Chain]bool{}
	for _, op := range tx.ops {
		if op.kind == opDeclare {
			m[op.chain] = true
		}
	}
	return m
}

func (tx *Transaction) fail(err error) {
	if tx.err == nil {
		tx.err = err
	}
}

// tableOK records an error unless f and t name a table.
func (tx *Transaction) tableOK(f Family, t Table) bool {
	if tx.err != nil {
		return false
	}
	if !f.Valid() {
		tx.fail(podnet.Invalid("table %q: family %v", t, f))
		return false
	}
	if err := validateWord("table", string(t)); err != nil {
		tx.fail(err)
		return false
	}
	return true
}

// chainOK records an error unless c names a chain a transaction may edit
// (with userOnly, one it may also declare, flush or delete).
func (tx *Transaction) chainOK(c Chain, userOnly bool) bool {
	if !tx.tableOK(c.Family, c.Table) {
		return false
	}
	if IsBuiltin(c.Name) {
		if userOnly {
			tx.fail(podnet.Invalid("chain %q in table %q: a built-in chain cannot be declared, flushed or deleted by a transaction", c.Name, c.Table))
			return false
		}
		return true
	}
	if err := ValidateChainName(c.Name); err != nil {
		tx.fail(err)
		return false
	}
	return true
}

func (tx *Transaction) render(c Chain, rules []Rule) []string {
	specs := make([]string, 0, len(rules))
	for i, r := range rules {
		switch r.Target.(type) {
		case DNAT, SNAT, Masquerade:
			if c.Table != TableNAT {
				tx.fail(podnet.Invalid("rule %d of chain %q: NAT target in table %q", i+1, c.Name, c.Table))
				return nil
			}
		}
		s, err := r.Spec(c.Family)
		if err != nil {
			tx.fail(fmt.Errorf("render rule %d of chain %q in table %q: %w", i+1, c.Name, c.Table, err))
			return nil
		}
		specs = append(specs, s)
	}
	return specs
}

// Declare sets the full contents of the owned user chain c, creating it if
// needed. Within the transaction the chain is flushed first (a ":CHAIN"
// line in --noflush mode), then rules are appended in order.
//
// Equivalent to: iptables -t TABLE -N CHAIN; iptables -t TABLE -F CHAIN; iptables -t TABLE -A CHAIN RULE...
func (tx *Transaction) Declare(c Chain, rules ...Rule) *Transaction {
	if !tx.chainOK(c, true) {
		return tx
	}
	specs := tx.render(c, rules)
	if tx.err != nil {
		return tx
	}
	h := fnv.New64a()
	for _, s := range specs {
		h.Write([]byte(s))
		h.Write([]byte{'\n'})
	}
	tx.ops = append(tx.ops, txOp{kind: opDeclare, chain: c, specs: specs, hash: h.Sum64()})
	return tx
}

// Append adds rules at the end of chain c.
//
// Equivalent to: iptables -t TABLE -A CHAIN RULE
func (tx *Transaction) Append(c Chain, rules ...Rule) *Transaction {
	if tx.chainOK(c, false) {
		if specs := tx.render(c, rules); tx.err == nil {
			tx.ops = append(tx.ops, txOp{kind: opAppend, chain: c, specs: specs})
		}
	}
	return tx
}

// Insert inserts rules into chain c so that the first is at position pos
// (1-based; 0 means 1) and the others follow it in order.
//
// Equivalent to: iptables -t TABLE -I CHAIN POS RULE
func (tx *Transaction) Insert(c Chain, pos int, rules ...Rule) *Transaction {
	if pos < 0 {
		tx.fail(podnet.Invalid("insert into chain %q: position %d", c.Name, pos))
	}
	if pos == 0 {
		pos = 1
	}
	if tx.chainOK(c, false) {
		if specs := tx.render(c, rules); tx.err == nil {
			tx.ops = append(tx.ops, txOp{kind: opInsert, chain: c, pos: pos, specs: specs})
		}
	}
	return tx
}

// Delete removes the first copy of each rule from chain c by its full
// specification. The transaction fails (and changes nothing) if a rule is
// not there; use RemoveRule when it may be absent.
//
// Equivalent to: iptables -t TABLE -D CHAIN RULE
func (tx *Transaction) Delete(c Chain, rules ...Rule) *Transaction {
	if tx.chainOK(c, false) {
		if specs := tx.render(c, rules); tx.err == nil {
			tx.ops = append(tx.ops, txOp{kind: opDelete, chain: c, specs: specs})
		}
	}
	return tx
}

// Flush empties the user chain c, creating it if needed.
//
// Equivalent to: iptables -t TABLE -N CHAIN; iptables -t TABLE -F CHAIN
func (tx *Transaction) Flush(c Chain) *Transaction {
	if tx.chainOK(c, true) {
		tx.ops = append(tx.ops, txOp{kind: opFlush, chain: c})
	}
	return tx
}

// DeleteChain removes the user chain c and its rules; it succeeds when the
// chain does not exist. Rules elsewhere that jump to c must be removed in
// the same transaction (RemoveRule, or rewriting their chain) or Run fails.
//
// Equivalent to: iptables -t TABLE -F CHAIN; iptables -t TABLE -X CHAIN
func (tx *Transaction) DeleteChain(c Chain) *Transaction {
	if tx.chainOK(c, true) {
		tx.ops = append(tx.ops, txOp{kind: opDeleteChain, chain: c})
	}
	return tx
}

// EnsureRule makes rule present in chain c exactly once — inserted at the
// top when top, else appended — leaving every other rule of c in place.
// Presence is judged against the table as it was before the transaction.
// It is meant for jumps from built-in or foreign chains into owned ones.
//
// Equivalent to: iptables -t TABLE -C CHAIN RULE || iptables -t TABLE -I|-A CHAIN RULE
func (tx *Transaction) EnsureRule(c Chain, top bool, rule Rule) *Transaction {
	if tx.chainOK(c, false) {
		if specs := tx.render(c, []Rule{rule}); tx.err == nil {
			pos := 0
			if top {
				pos = 1
			}
			tx.ops = append(tx.ops, txOp{kind: opEnsure, chain: c, pos: pos, specs: specs})
		}
	}
	return tx
}

// RemoveRule removes every copy of rule from chain c; it is not an error
// when there is none or the chain does not exist.
//
// Equivalent to: while iptables -t TABLE -D CHAIN RULE; do :; done
func (tx *Transaction) RemoveRule(c Chain, rule Rule) *Transaction {
	if tx.chainOK(c, false) {
		if specs := tx.render(c, []Rule{rule}); tx.err == nil {
			tx.ops = append(tx.ops, txOp{kind: opRemove, chain: c, specs: specs})
		}
	}
	return tx
}

// Prune removes, from table t of family f, every chain that owned claims
// and that this transaction does not Declare or Flush, together with the
// rules in other chains that jump to them. Chains owned does not claim,
// and built-in chains, are left alone, and so are their other rules.
//
// Equivalent to: for each stale chain C: iptables -D X ... -j C (for each
// reference); iptables -F C; iptables -X C
func (tx *Transaction) Prune(f Family, t Table, owned Owner) *Transaction {
	if owned == nil {
		tx.fail(podnet.Invalid("prune %v table %q: no owner", f, t))
	}
	if tx.tableOK(f, t) {
		tx.ops = append(tx.ops, txOp{kind: opPrune, chain: Chain{Family: f, Table: t}, owned: owned})
	}
	return tx
}

// SkipUnchanged lets a Kernel backend leave out a Declare whose contents
// equal what the same Kernel last wrote to that chain successfully. It
// makes re-applying an unchanged rule set nearly free, at the price of not
// repairing a chain someone else edited since; run without it (or call
// Kernel.Forget) to force a rewrite, e.g. after a canary chain vanished.
func (tx *Transaction) SkipUnchanged() *Transaction {
	tx.skipUnchanged = true
	return tx
}

// ZeroCounters resets the packet and byte counters of every chain in each
// table the transaction writes, before applying its changes. Besides its
// own use it makes big transactions fast: iptables-nft (1.8.x) finds each
// chain a --noflush restore names in a list it scans linearly, unless the
// table's section holds a command that names no chain; -Z is such a
// command, which makes loading thousands of chains linear instead of
// quadratic (docs/performance.md has the figures). The price is the
// counters of chains the caller does not own.
//
// Equivalent to: iptables -t TABLE -Z
func (tx *Transaction) ZeroCounters() *Transaction {
	tx.zeroCounters = true
	return tx
}

// Text renders tx as the iptables-restore input Run would feed for family
// f, assuming state-dependent operations (EnsureRule, RemoveRule, Prune)
// find the given tables (nil: empty tables). It is meant for debugging and
// golden tests.
func (tx *Transaction) Text(f Family, tables ...*TableRules) (string, error) {
	state := map[tableKey]*TableRules{}
	for _, t := range tables {
		state[tableKey{f, t.Name}] = t
	}
	plans, err := tx.plan(state, nil)
	if err != nil {
		return "", err
	}
	if p := plans[f]; p != nil {
		return p.text(), nil
	}
	return "", nil
}
