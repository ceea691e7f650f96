package policy

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/netns"
)

// Config configures an Enforcer. The zero value of every optional field
// is correct.
type Config struct {
	// NetNS is the node's namespace, whose forward hook carries the pods'
	// traffic. Required.
	NetNS *netns.NS
	// Table names the enforcer's nftables table (family inet); ""
	// means DefaultTable.
	Table string
	// Families the enforcer filters; nil means IPv4 and IPv6 (a family
	// left out is not filtered at all, so a dual-stack pod's policies
	// would not hold for it).
	Families []podnet.Family
	// SkipBridgeNetfilter leaves net.bridge.bridge-nf-call-iptables and
	// -ip6tables of NetNS alone. By default the first sync sets them to
	// 1, since without them traffic between two pods on one bridge never
	// meets the forward hook, and fails with an error matching
	// ErrNotSupported when br_netfilter is not loaded. Set it when pods
	// are routed (each behind its own veth, no bridge).
	SkipBridgeNetfilter bool
	// Logger receives one line per sync; nil discards.
	Logger *slog.Logger

	// dial opens the socket; nil means one in NetNS. Tests write through
	// a recorder instead.
	dial func() (nftConn, error)
}

// Enforcer keeps the NetworkPolicy rules of one node: UpdatePolicy,
// UpdatePod, UpdateNamespace and their Delete counterparts change its
// model, Sync writes what changed. It is safe for concurrent use; syncs
// are serialised.
type Enforcer struct {
	cfg  Config
	fams []podnet.Family
	log  *slog.Logger
	w    writer

	mu         sync.Mutex // guards the model, changed, fullReason, pending, commits
	m          model
	changed    bool
	fullReason string // why the next sync must be full; "" when it need not
	pending    time.Time
	wake       chan struct{} // 1-buffered: a change arrived, for Run
	commits    commits       // which changes a sync has written, for WaitSynced

	syncMu  sync.Mutex // serialises Sync, Verify's reading and Cleanup
	conn    nftConn
	written *ruleset // what the last successful sync wrote; nil: nothing
}

// New validates cfg and returns an Enforcer with an empty model. Nothing
// is written until Sync; the first Sync is a full one.
func New(cfg Config) (*Enforcer, error) {
	if cfg.NetNS == nil && cfg.dial == nil {
		return nil, podnet.Invalid("network policy enforcer: no NetNS")
	}
	table := cfg.Table
	if table == "" {
		table = DefaultTable
	}
	if len(table) > 64 || badName(table) {
		return nil, podnet.Invalid("network policy enforcer: table name %q", table)
	}
	fams := slices.Clone(cfg.Families)
	if len(fams) == 0 {
		fams = []podnet.Family{podnet.IPv4, podnet.IPv6}
	}
	slices.Sort(fams)
	fams = slices.Compact(fams)
	for _, f := range fams {
		if !f.Valid() {
			return nil, podnet.Invalid("network policy enforcer: family %v", f)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.dial == nil {
		ns := cfg.NetNS
		cfg.dial = func() (nftConn, error) { return nft.Open(ns) }
	}
	return &Enforcer{
		cfg: cfg, fams: fams, log: log,
		w:          writer{t: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}},
		m:          newModel(),
		fullReason: "start",
		wake:       make(chan struct{}, 1),
		commits:    newCommits(),
	}, nil
}

// Table returns the name of the enforcer's table (family inet).
func (e *Enforcer) Table() string { return e.w.t.Name }

// Families returns the address families the enforcer filters.
func (e *Enforcer) Families() []podnet.Family { return slices.Clone(e.fams) }

// UpdatePolicy adds or replaces a policy. It validates p and copies it;
// the change reaches the table at the next Sync.
func (e *Enforcer) UpdatePolicy(p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m.putPolicy(p.clone())
	e.markChanged()
	return nil
}

// DeletePolicy removes a policy; deleting an unknown one does nothing.
func (e *Enforcer) DeletePolicy(n Name) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m.policies[n]; ok {
		e.m.removePolicy(n)
		e.markChanged()
	}
}

// UpdateAdminPolicy adds or replaces an AdminPolicy. It validates p and
// copies it; the change reaches the table at the next Sync.
func (e *Enforcer) UpdateAdminPolicy(p AdminPolicy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m.putTiered(newTiered(tierAdmin, p.Name, p.Priority, p.Subject, p.Ingress, p.Egress))
	e.markChanged()
	return nil
}

// DeleteAdminPolicy removes an AdminPolicy; deleting an unknown one does
// nothing.
func (e *Enforcer) DeleteAdminPolicy(name string) {
	e.deleteTiered(tierAdmin, name)
}

// UpdateBaselinePolicy adds or replaces a BaselinePolicy. It validates p
// and copies it; the change reaches the table at the next Sync.
func (e *Enforcer) UpdateBaselinePolicy(p BaselinePolicy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m.putTiered(newTiered(tierBaseline, p.Name, 0, p.Subject, p.Ingress, p.Egress))
	e.markChanged()
	return nil
}

// DeleteBaselinePolicy removes a BaselinePolicy; deleting an unknown one
// does nothing.
func (e *Enforcer) DeleteBaselinePolicy(name string) {
	e.deleteTiered(tierBaseline, name)
}

func (e *Enforcer) deleteTiered(t tier, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m.tierMap(t)[name]; ok {
		e.m.removeTiered(t, name)
		e.markChanged()
	}
}

// UpdateNode adds or replaces a node: its labels and addresses, which
// admin and baseline policies' nodes peers read.
func (e *Enforcer) UpdateNode(n Node) error {
	if err := n.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m.putNode(n.clone())
	e.markChanged()
	return nil
}

// DeleteNode removes a node; deleting an unknown one does nothing.
func (e *Enforcer) DeleteNode(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m.nodes[name]; ok {
		e.m.removeNode(name)
		e.markChanged()
	}
}

// UpdatePod adds or replaces a pod. It validates p and copies it.
func (e *Enforcer) UpdatePod(p Pod) error {
	if err := p.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m.putPod(p.clone())
	e.markChanged()
	return nil
}

// DeletePod removes a pod; deleting an unknown one does nothing.
func (e *Enforcer) DeletePod(n Name) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m.pods[n]; ok {
		e.m.removePod(n)
		e.markChanged()
	}
}

// UpdateNamespace adds or replaces a namespace's labels.
func (e *Enforcer) UpdateNamespace(n Namespace) error {
	if err := n.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c := n
	c.Labels = cloneLabels(n.Labels)
	e.m.putNamespace(&c)
	e.markChanged()
	return nil
}

// DeleteNamespace forgets a namespace's labels; its pods, if any are
// left, then match only selectors that need no label.
func (e *Enforcer) DeleteNamespace(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m.namespaces[name]; ok {
		e.m.removeNamespace(name)
		e.markChanged()
	}
}

func cloneLabels(l map[string]string) map[string]string {
	if l == nil {
		return nil
	}
	c := make(map[string]string, len(l))
	for k, v := range l {
		c[k] = v
	}
	return c
}

// markChanged records a change and wakes Run; e.mu must be held.
func (e *Enforcer) markChanged() {
	if e.pending.IsZero() {
		e.pending = time.Now()
	}
	e.changed = true
	e.commits.changed++
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// RequestFullSync makes the next Sync rewrite the whole table, whatever
// was written before, and wakes Run.
func (e *Enforcer) RequestFullSync(reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fullReason == "" {
		e.fullReason = reason
	}
	e.markChanged()
}

// SyncResult tells what a Sync did.
type SyncResult struct {
	Full   bool   // the table was replaced
	Reason string // why a full sync: "start", "previous sync failed", "table missing or flushed", "table differs from what was written", …
	// Elements is how many set and map elements a partial sync added
	// or deleted; Rules how many rules it (or a full sync) wrote.
	Elements, Rules int
	Duration        time.Duration
	// Pending is when the oldest change this sync wrote arrived; zero
	// when it wrote none.
	Pending time.Time
}

// Sync writes the changes to the model since the last successful sync in
// one nf_tables transaction. A partial sync writes only the difference
// between the table as written and as the model now asks; a full sync —
// the first, one after a failure, one after the table was flushed or
// deleted (the base chains are read at every sync), and one requested —
// replaces the whole table, keeping the denied counters.
//
// Equivalent to: nft -f of the difference, or of the whole table
func (e *Enforcer) Sync(ctx context.Context) (SyncResult, error) {
	e.syncMu.Lock()
	defer e.syncMu.Unlock()
	start := time.Now()
	c, err := e.connect()
	if err != nil {
		err = e.opErr("sync", err)
		e.mu.Lock()
		e.commits.failed = err
		e.mu.Unlock()
		return SyncResult{}, err
	}
	if e.written == nil {
		e.RequestFullSync("start")
	} else if !e.w.intact(c, e.written) {
		e.RequestFullSync("table missing or flushed")
	}
	e.mu.Lock()
	reason, changed, pending := e.fullReason, e.changed, e.pending
	if !changed {
		e.mu.Unlock()
		return SyncResult{}, nil
	}
	if reason != "" {
		e.m.frags = nil // a full sync compiles every fragment afresh
	}
	want := compile(&e.m, e.fams)
	gen := e.commits.changed
	e.fullReason, e.changed, e.pending = "", false, time.Time{}
	e.mu.Unlock()

	res := SyncResult{Full: reason != "", Reason: reason, Pending: pending}
	if res.Full {
		res.Rules, err = e.writeFull(c, want)
	} else {
		res.Rules, res.Elements, err = e.writePartial(c, want)
	}
	if err != nil {
		err = e.opErr("sync", err)
		e.dropConn()
		e.mu.Lock()
		e.fullReason, e.changed = "previous sync failed", true
		if e.pending.IsZero() || (!pending.IsZero() && pending.Before(e.pending)) {
			e.pending = pending
		}
		e.commits.failed = err
		e.mu.Unlock()
		e.log.Error("network policy sync failed", "full", res.Full, "err", err)
		return SyncResult{Full: res.Full, Reason: reason}, err
	}
	e.written = want
	e.mu.Lock()
	e.commits.done(gen)
	e.mu.Unlock()
	res.Duration = time.Since(start)
	e.log.Info("network policies synced", "full", res.Full, "reason", res.Reason, "rules", res.Rules, "elements", res.Elements, "duration", res.Duration)
	return res, nil
}

func (e *Enforcer) writeFull(c nftConn, want *ruleset) (int, error) {
	if e.cfg.NetNS != nil && !e.cfg.SkipBridgeNetfilter {
		if err := bridge.SetNetfilter(e.cfg.NetNS, true); err != nil {
			return 0, fmt.Errorf("traffic between pods of one bridge would pass unfiltered (set SkipBridgeNetfilter if pods are routed): %w", err)
		}
	}
	rules, err := e.w.full(c, want, e.w.readCounters(c))
	if err != nil {
		return 0, err
	}
	return rules, c.Flush()
}

func (e *Enforcer) writePartial(c nftConn, want *ruleset) (rules, elems int, err error) {
	d := diffOf(e.written, want)
	if d.empty() {
		return 0, 0, nil
	}
	if rules, err = e.w.partial(c, e.written, want, d); err != nil {
		return 0, 0, err
	}
	return rules, d.elemChanges, c.Flush()
}

func (e *Enforcer) connect() (nftConn, error) {
	if e.conn == nil {
		c, err := e.cfg.dial()
		if err != nil {
			return nil, err
		}
		e.conn = c
	}
	return e.conn, nil
}

// dropConn forgets the socket after a failed batch, so that nothing
// queued on it reaches the kernel with the next one.
func (e *Enforcer) dropConn() {
	if e.conn != nil {
		e.conn.CloseLasting()
		e.conn = nil
	}
}

func (e *Enforcer) opErr(op string, err error) error {
	ns := "recorder"
	if e.cfg.NetNS != nil {
		ns = e.cfg.NetNS.String()
	}
	return &podnet.OpError{Op: op, Kind: "nftables table", Name: "inet " + e.w.t.Name, NetNS: ns, Err: err}
}

// Verify reads the table back and reports whether it holds what the last
// sync wrote: every element of every set and map, and the rules of every
// chain (counted, and each with its policy's comment). When it does not,
// the next Sync is a full one (reason "table differs from what was
// written"), which repairs it. Its cost grows with the table.
func (e *Enforcer) Verify(ctx context.Context) (bool, error) {
	e.syncMu.Lock()
	defer e.syncMu.Unlock()
	if e.written == nil {
		return false, nil
	}
	c, err := e.connect()
	if err != nil {
		return false, e.opErr("verify", err)
	}
	if err := e.w.verify(c, e.written); err != nil {
		e.log.Warn("network policy table differs from what was written", "err", err)
		e.RequestFullSync("table differs from what was written")
		return false, nil
	}
	return true, nil
}

// Denied returns the packets dropped because no policy allowed them,
// ingress and egress, since the table was created (a full sync keeps
// the counts).
//
// Equivalent to: nft list counters table inet T
func (e *Enforcer) Denied(ctx context.Context) (ingress, egress uint64, err error) {
	e.syncMu.Lock()
	defer e.syncMu.Unlock()
	c, err := e.connect()
	if err != nil {
		return 0, 0, e.opErr("read counters of", err)
	}
	cs := e.w.readCounters(c)
	return cs[counterIngress], cs[counterEgress], nil
}

// Cleanup deletes the enforcer's table, and with it every rule, and
// forgets what it wrote: the next Sync is a full one. The model stays.
// A table already gone is no error.
//
// Equivalent to: nft delete table inet T
func (e *Enforcer) Cleanup(ctx context.Context) error {
	e.syncMu.Lock()
	defer e.syncMu.Unlock()
	c, err := e.connect()
	if err != nil {
		return e.opErr("delete", err)
	}
	c.AddTable(e.w.t)
	c.DelTable(e.w.t)
	if err := c.Flush(); err != nil {
		e.dropConn()
		return e.opErr("delete", err)
	}
	e.written = nil
	e.RequestFullSync("cleanup")
	return nil
}
