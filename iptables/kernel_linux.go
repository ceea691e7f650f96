package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	goipt "github.com/coreos/go-iptables/iptables"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns"
)

// Kernel is the Backend that programs the iptables tables of one network
// namespace by running iptables-restore and iptables-save inside it, and
// iptables (through go-iptables) for Check. The binaries are the system's defaults (on
// Debian the nf_tables variants), or those of the Mode given to
// NewKernelMode. It is safe for concurrent use.
type Kernel struct {
	ns   *netns.NS
	mode Mode // "" runs the system's default binaries

	mu      sync.Mutex
	written map[Chain]uint64 // hash of each chain's contents as last declared successfully
	ipt     map[Family]*goipt.IPTables
}

var _ Backend = (*Kernel)(nil)

// NewKernel returns the backend for the tables of ns. Nothing is executed
// until it is used.
func NewKernel(ns *netns.NS) *Kernel {
	return &Kernel{ns: ns, written: map[Chain]uint64{}, ipt: map[Family]*goipt.IPTables{}}
}

// NetNS returns the namespace k acts in.
func (k *Kernel) NetNS() *netns.NS { return k.ns }

// Forget drops what k remembers about the chains it wrote, so the next
// SkipUnchanged transaction rewrites every chain it declares.
func (k *Kernel) Forget() {
	k.mu.Lock()
	clear(k.written)
	k.mu.Unlock()
}

// binary names the system's default program for tool of family f.
func binary(f Family, tool string) string { return binaryOf("", f, tool) }

// Run applies tx all or nothing: for each family it touches, one
// iptables-restore --noflush process reads the whole change. NAT targets
// outside the nat table are refused before anything runs. iptables-restore
// commits table by table (each section up to its COMMIT is one nf_tables
// batch), so when tx spans several tables or both families, Run first
// saves every table but the one it applies last (the largest) and, if a
// later table fails, restores the saved ones: the kernel then holds what it
// held before, except that a table tx brought into being stays, empty.
// Tables whose current rules the transaction depends on (EnsureRule,
// RemoveRule, Prune) are read first with iptables-save; a single-table
// transaction of Declare/Append/Insert/Delete/DeleteChain only reads
// nothing back.
//
// Equivalent to: iptables-restore -w --noflush < TEXT; ip6tables-restore -w --noflush < TEXT6
func (k *Kernel) Run(ctx context.Context, tx *Transaction) error {
	if tx.err != nil {
		return fmt.Errorf("apply transaction in netns %q: %w", k.ns, tx.err)
	}
	state := map[tableKey]*TableRules{}
	for _, key := range tx.stateNeeded() {
		t, err := k.Save(ctx, key.f, key.t)
		if err != nil {
			return err
		}
		state[key] = t
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var unchanged func(Chain, uint64) bool
	if tx.skipUnchanged {
		unchanged = func(c Chain, h uint64) bool {
			old, ok := k.written[c]
			return ok && old == h
		}
	}
	plans, err := tx.plan(state, unchanged)
	if err != nil {
		return fmt.Errorf("apply transaction in netns %q: %w", k.ns, err)
	}
	// iptables-restore commits each table at its COMMIT line, so a
	// transaction spanning several tables (or both families) is made
	// all-or-nothing here: every table but the last one applied is saved
	// first, and restored from that copy if a later one fails.
	var sections []tableKey
	for _, f := range []Family{IPv4, IPv6} {
		if p := plans[f]; p != nil && !p.empty() {
			p.smallestFirst()
			for _, tp := range p.tables {
				sections = append(sections, tableKey{f, tp.table})
			}
		}
	}
	snapshots := map[tableKey][]byte{}
	for i, s := range sections {
		if i == len(sections)-1 {
			break
		}
		out, err := execns.Output(ctx, k.ns, nil, k.tool(s.f, "-save"), "-t", string(s.t))
		if err != nil {
			return &podnet.OpError{Op: "save before applying transaction to", Kind: s.f.String() + " table", Name: string(s.t), NetNS: k.ns.String(), Err: err}
		}
		snapshots[s] = out
	}
	for _, f := range []Family{IPv4, IPv6} {
		p := plans[f]
		if p == nil || p.empty() {
			continue
		}
		_, err := execns.Output(ctx, k.ns, strings.NewReader(p.text()), k.tool(f, "-restore"), "-w", "--noflush")
		if err != nil {
			// What the kernel holds is no longer what we remember.
			clear(k.written)
			names := make([]string, 0, len(p.tables))
			for _, tp := range p.tables {
				names = append(names, string(tp.table))
			}
			msg := "apply transaction to"
			if rerr := k.rollback(ctx, snapshots); rerr != nil {
				msg = "apply transaction (and roll back: " + rerr.Error() + ") to"
			}
			return &podnet.OpError{Op: msg, Kind: f.String() + " tables", Name: strings.Join(names, ","), NetNS: k.ns.String(), Err: restoreErr(err)}
		}
	}
	k.remember(tx)
	return nil
}

// remember updates what k knows it wrote after tx applied: the contents of
// the chains tx declared, and nothing of chains it otherwise changed or
// pruned. Declared chains are collected once, so a prune over a
// transaction of tens of thousands of chains stays linear.
func (k *Kernel) remember(tx *Transaction) {
	var declared map[Chain]bool
	for _, op := range tx.ops {
		switch op.kind {
		case opDeclare:
			k.written[op.chain] = op.hash
		case opAppend, opInsert, opDelete, opFlush, opDeleteChain:
			delete(k.written, op.chain)
		case opPrune:
			if declared == nil {
				declared = tx.declared()
			}
			for c := range k.written {
				if c.Family == op.chain.Family && c.Table == op.chain.Table && !IsBuiltin(c.Name) && op.owned(c.Name) && !declared[c] {
					delete(k.written, c)
				}
			}
		}
	}
}

// rollback puts back the saved tables of a failed transaction, each with a
// flush-mode restore of the table as it was saved. A table that had not
// been changed yet is restored to what it already holds.
func (k *Kernel) rollback(ctx context.Context, snapshots map[tableKey][]byte) error {
	var errs []error
	for s, text := range snapshots {
		if _, err := execns.Output(ctx, k.ns, bytes.NewReader(text), k.tool(s.f, "-restore"), "-w", "-T", string(s.t)); err != nil {
			errs = append(errs, fmt.Errorf("%v table %s: %w", s.f, s.t, err))
		}
	}
	return errors.Join(errs...)
}

// restoreErr is the one place that reads iptables' messages: a missing
// chain or rule maps to ErrNotFound.
func restoreErr(err error) error {
	var ee *execns.Error
	if errors.As(err, &ee) {
		s := ee.Stderr
		if strings.Contains(s, "does not exist") || strings.Contains(s, "does a matching rule exist") || strings.Contains(s, "No such file or directory") {
			return fmt.Errorf("%w: %w", podnet.ErrNotFound, err)
		}
	}
	return err
}

// Save reads table t of family f. A table the namespace never used reads
// as its built-in chains without rules.
//
// Equivalent to: iptables-save -t TABLE
func (k *Kernel) Save(ctx context.Context, f Family, t Table) (*TableRules, error) {
	rs, err := k.save(ctx, f, "-t", string(t))
	if err != nil {
		return nil, &podnet.OpError{Op: "save", Kind: f.String() + " table", Name: string(t), NetNS: k.ns.String(), Err: err}
	}
	if tr := rs.Table(t); tr != nil {
		return tr, nil
	}
	return emptyTable(t), nil
}

// SaveAll reads every table of family f.
//
// Equivalent to: iptables-save
func (k *Kernel) SaveAll(ctx context.Context, f Family) (*Ruleset, error) {
	rs, err := k.save(ctx, f)
	if err != nil {
		return nil, &podnet.OpError{Op: "save", Kind: f.String() + " tables", NetNS: k.ns.String(), Err: err}
	}
	return rs, nil
}

func (k *Kernel) save(ctx context.Context, f Family, args ...string) (*Ruleset, error) {
	if !f.Valid() {
		return nil, podnet.Invalid("family %v", f)
	}
	out, err := execns.Output(ctx, k.ns, nil, k.tool(f, "-save"), args...)
	if err != nil {
		return nil, err
	}
	return ParseSave(f, string(out))
}

// iptables returns the go-iptables handle for f, made inside the namespace
// (it runs "iptables --version" when created).
func (k *Kernel) iptables(f Family) (*goipt.IPTables, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if ipt := k.ipt[f]; ipt != nil {
		return ipt, nil
	}
	proto := goipt.ProtocolIPv4
	if f == IPv6 {
		proto = goipt.ProtocolIPv6
	}
	var ipt *goipt.IPTables
	err := k.ns.Do(func() error {
		var err error
		ipt, err = goipt.New(goipt.IPFamily(proto), goipt.Timeout(5), goipt.Path(k.tool(f, "")))
		return err
	})
	if err != nil {
		return nil, err
	}
	k.ipt[f] = ipt
	return ipt, nil
}

// single runs one go-iptables call inside the namespace.
func (k *Kernel) single(c Chain, r Rule, fn func(ipt *goipt.IPTables, args []string) error) error {
	if !c.Family.Valid() {
		return podnet.Invalid("chain %q: family %v", c.Name, c.Family)
	}
	args, err := r.Args(c.Family)
	if err != nil {
		return err
	}
	ipt, err := k.iptables(c.Family)
	if err != nil {
		return err
	}
	return k.ns.Do(func() error { return fn(ipt, args) })
}

func (k *Kernel) opErr(op string, c Chain, err error) error {
	if err == nil {
		return nil
	}
	var ie *goipt.Error
	if errors.As(err, &ie) && ie.IsNotExist() {
		err = fmt.Errorf("%w: %w", podnet.ErrNotFound, err)
	}
	return &podnet.OpError{Op: op, Kind: "chain", Name: string(c.Table) + "/" + c.Name, NetNS: k.ns.String(), Err: err}
}

// Check reports whether r is in chain c; a missing chain reads as false.
// It runs one iptables process, through go-iptables, which waits for the
// xtables lock for at most 5 seconds.
//
// Equivalent to: iptables -w 5 -t TABLE -C CHAIN RULE
func (k *Kernel) Check(c Chain, r Rule) (bool, error) {
	var ok bool
	err := k.single(c, r, func(ipt *goipt.IPTables, args []string) error {
		var err error
		ok, err = ipt.Exists(string(c.Table), c.Name, args...)
		return err
	})
	return ok, k.opErr("check rule in", c, err)
}

// builtinsOf lists the built-in chains of a table in iptables-save order.
func builtinsOf(t Table) []string {
	switch t {
	case TableNAT:
		return []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}
	case TableFilter:
		return []string{"INPUT", "FORWARD", "OUTPUT"}
	case TableRaw:
		return []string{"PREROUTING", "OUTPUT"}
	case TableMangle:
		return []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
	}
	return nil
}

func emptyTable(t Table) *TableRules {
	tr := &TableRules{Name: t}
	for _, c := range builtinsOf(t) {
		tr.Chains = append(tr.Chains, &ChainRules{Name: c, Policy: "ACCEPT"})
	}
	return tr
}
