package service

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// Config configures a Proxy. The zero value of every optional field is
// correct.
type Config struct {
	// NetNS is the namespace whose tables and conntrack the proxy
	// programs. Required unless Backend is set; without it, conntrack
	// cleanup is skipped.
	NetNS *netns.NS
	// Mode selects iptables rules or native nftables tables; "" means
	// ModeIptables. ModeNftables needs NetNS and no Backend.
	Mode Mode
	// Backend applies the rules in ModeIptables; nil means
	// iptables.NewKernel(NetNS). Tests pass a *iptables.Fake.
	Backend iptables.Backend
	// ChainPrefix names the chains; "" means DefaultChainPrefix,
	// KubeChainPrefix gives kube-proxy's names.
	ChainPrefix string
	// NodeName selects the local endpoints for traffic policy Local.
	NodeName string
	// ClusterCIDRs are the pod networks (at most one per family). Traffic
	// to a cluster IP from outside them is masqueraded.
	ClusterCIDRs []netip.Prefix
	// Families the proxy programs; nil means IPv4 only.
	Families []iptables.Family
	// MasqueradeBit is the packet-mark bit that asks for masquerade;
	// 0 means DefaultMasqueradeBit.
	MasqueradeBit int
	// Logger receives one line per sync; nil discards.
	Logger *slog.Logger
}

// Proxy keeps the iptables rules of a set of Services in one namespace:
// Update and Delete change its model, Sync writes what changed. It is safe
// for concurrent use; syncs are serialised.
type Proxy struct {
	cfg   Config
	pl    plane
	be    iptables.Backend
	r     renderer
	ch    Chains
	log   *slog.Logger
	mu    sync.Mutex // guards want, dirty, full, pending, triggers, lastSync
	want  map[Name]*Service
	dirty map[Name]bool
	full  bool
	// pending is when the oldest change not yet written arrived (zero when
	// none waits); lastSync when the last successful sync ended.
	pending, lastSync time.Time
	triggers          []time.Time   // see RecordTrigger
	changed           chan struct{} // 1-buffered: a change arrived, for Run
	syncMu            sync.Mutex    // serialises Sync and Cleanup; guards written
	// written is what the last successful syncs put into the tables, per
	// Service: the proxy's own record, so a partial sync never reads the
	// tables back.
	written map[Name]*record
}

type record struct {
	svc *Service
	r   *rendering
}

// New validates cfg and returns a Proxy with no Services. Nothing is
// written until Sync; the first Sync is a full one.
func New(cfg Config) (*Proxy, error) {
	ch, err := NewChains(cfg.ChainPrefix)
	if err != nil {
		return nil, err
	}
	be := cfg.Backend
	switch cfg.Mode {
	case "", ModeIptables:
	case ModeNftables:
		if be != nil || cfg.NetNS == nil {
			return nil, podnet.Invalid("service proxy: mode %q needs NetNS and no Backend", cfg.Mode)
		}
	default:
		return nil, podnet.Invalid("service proxy: mode %q: want %q or %q", cfg.Mode, ModeIptables, ModeNftables)
	}
	if be == nil && cfg.Mode != ModeNftables {
		if cfg.NetNS == nil {
			return nil, podnet.Invalid("service proxy: neither NetNS nor Backend is set")
		}
		be = iptables.NewKernel(cfg.NetNS)
	}
	fams := cfg.Families
	if len(fams) == 0 {
		fams = []iptables.Family{iptables.IPv4}
	}
	for _, f := range fams {
		if f != iptables.IPv4 && f != iptables.IPv6 {
			return nil, podnet.Invalid("service proxy: family %v", f)
		}
	}
	bit := cfg.MasqueradeBit
	if bit == 0 {
		bit = DefaultMasqueradeBit
	}
	if bit < 0 || bit > 31 {
		return nil, podnet.Invalid("service proxy: masquerade bit %d outside 0-31", bit)
	}
	cidr := map[iptables.Family]netip.Prefix{}
	for _, c := range cfg.ClusterCIDRs {
		if !c.IsValid() {
			return nil, podnet.Invalid("service proxy: invalid cluster CIDR")
		}
		f := iptables.FamilyOf(c.Addr())
		if _, dup := cidr[f]; dup {
			return nil, podnet.Invalid("service proxy: two %v cluster CIDRs", f)
		}
		cidr[f] = c.Masked()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg: cfg, be: be, ch: ch, log: log,
		r:       renderer{chains: ch, families: fams, cidr: cidr, node: cfg.NodeName, mark: 1 << bit},
		want:    map[Name]*Service{},
		dirty:   map[Name]bool{},
		full:    true,
		written: map[Name]*record{},
		changed: make(chan struct{}, 1),
	}
	if cfg.Mode == ModeNftables {
		p.pl = newNftPlane(p)
	} else {
		p.pl = iptablesPlane{p}
	}
	return p, nil
}

// Chains returns the proxy's chain names.
func (p *Proxy) Chains() Chains { return p.ch }

// Update adds or replaces a Service (with its endpoints). It validates s
// and copies it; the change reaches the tables at the next Sync, and only
// when s differs from what the proxy has.
func (p *Proxy) Update(s Service) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, ip := range slices.Concat(s.ClusterIPs, s.ExternalIPs) {
		if !slices.Contains(p.r.families, iptables.FamilyOf(ip)) {
			return podnet.Invalid("service %q: %s is %v, which the proxy does not program", s.Name.String(), ip, iptables.FamilyOf(ip))
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old := p.want[s.Name]; old != nil && old.equal(&s) {
		return nil
	}
	p.want[s.Name] = s.clone()
	p.markDirty(s.Name)
	return nil
}

// Delete removes a Service; its rules go at the next Sync. Deleting an
// unknown Service does nothing.
func (p *Proxy) Delete(n Name) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.want[n]; ok {
		delete(p.want, n)
		p.markDirty(n)
	}
}

// markDirty records that n changed since the last sync and wakes Run.
// p.mu must be held.
func (p *Proxy) markDirty(n Name) {
	if p.pending.IsZero() {
		p.pending = time.Now()
	}
	p.dirty[n] = true
	p.notify()
}

func (p *Proxy) notify() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// RecordTrigger records when a change that is now on its way to the
// tables was made: for Services read from Kubernetes, the
// endpoints.kubernetes.io/last-change-trigger-time annotation of the
// EndpointSlice (or the Service's creation time). The next sync that
// succeeds lists it in SyncResult.Triggers, so that the caller can
// measure network programming latency, as kube-proxy does. Zero times are
// ignored.
func (p *Proxy) RecordTrigger(t time.Time) {
	if t.IsZero() {
		return
	}
	p.mu.Lock()
	p.triggers = append(p.triggers, t)
	p.mu.Unlock()
}

// Families returns the address families the proxy programs.
func (p *Proxy) Families() []iptables.Family { return slices.Clone(p.r.families) }

// Status is what a health check needs to know about the proxy.
type Status struct {
	// LastSync is when the last successful sync ended; zero before one.
	LastSync time.Time
	// PendingSince is when the oldest change not yet in the tables
	// arrived; zero when the tables are up to date. A failed sync leaves
	// its changes pending.
	PendingSince time.Time
}

// Healthy reports whether no change has waited longer than timeout at
// time now: kube-proxy's /healthz rule, with timeout twice its sync
// period.
func (s Status) Healthy(now time.Time, timeout time.Duration) bool {
	return s.PendingSince.IsZero() || now.Sub(s.PendingSince) <= timeout
}

// Status returns the proxy's sync status.
func (p *Proxy) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Status{LastSync: p.lastSync, PendingSince: p.pending}
}

// Replace makes the proxy's Services exactly svcs: new and changed ones
// are updated, missing ones deleted. It validates all of them first and
// changes nothing if one is invalid.
func (p *Proxy) Replace(svcs []Service) error {
	seen := map[Name]bool{}
	for i := range svcs {
		if err := svcs[i].Validate(); err != nil {
			return err
		}
		if seen[svcs[i].Name] {
			return podnet.Invalid("service %q listed twice", svcs[i].Name.String())
		}
		seen[svcs[i].Name] = true
	}
	for _, s := range svcs {
		if err := p.Update(s); err != nil {
			return err
		}
	}
	p.mu.Lock()
	var gone []Name
	for n := range p.want {
		if !seen[n] {
			gone = append(gone, n)
		}
	}
	p.mu.Unlock()
	for _, n := range gone {
		p.Delete(n)
	}
	return nil
}

// Stats returns how many Services and endpoint chains the last successful
// syncs wrote.
func (p *Proxy) Stats() (services, endpoints int) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	return p.pl.stats()
}

// SyncResult tells what a Sync did.
type SyncResult struct {
	Full     bool          // all chains were rewritten
	Reason   string        // why a full sync: "start", "previous sync failed", "canary chain missing"
	Services int           // Services whose rules were (re)written or removed
	Rules    int           // rule lines written
	Flows    int           // conntrack flows deleted
	Duration time.Duration // time spent
	// Triggers are the times given to RecordTrigger before this sync
	// started: the changes it put in force.
	Triggers []time.Time
}

// Sync writes the changes since the last successful sync in one
// transaction (one iptables-restore per family): a partial sync rewrites
// only the chains of changed Services and edits the shared dispatch chains
// rule by rule. It makes a full sync — every owned chain rewritten, stale
// ones removed, the jumps from the built-in chains ensured — the first
// time, after a failed sync, and when the canary chain has vanished
// (someone flushed the tables). After a successful sync it deletes the UDP
// conntrack flows that would otherwise keep reaching removed endpoints or
// the rejection of a Service that had none.
//
// A full sync of 1000 chains or more starts each table with -Z, resetting
// the packet counters of the namespace's nat and filter rules: it keeps
// iptables-nft's restore linear (see iptables.Transaction.ZeroCounters).
//
// Equivalent to: iptables-restore --noflush (kube-proxy's syncProxyRules)
func (p *Proxy) Sync(ctx context.Context) (SyncResult, error) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	start := time.Now()
	p.mu.Lock()
	full, reason := p.full, "start"
	if !p.lastSync.IsZero() {
		reason = "previous sync failed"
	}
	p.mu.Unlock()
	if !full {
		ok, err := p.pl.intact()
		if err != nil {
			return SyncResult{}, fmt.Errorf("sync services in netns %q: check canary: %w", p.nsName(), err)
		}
		if !ok {
			full, reason = true, "canary chain missing"
		}
	}
	// Take the changes; put them back if the sync fails.
	p.mu.Lock()
	dirty, pending, triggers := p.dirty, p.pending, p.triggers
	p.dirty, p.pending, p.triggers = map[Name]bool{}, time.Time{}, nil
	want := make(map[Name]*Service, len(p.want))
	if full {
		for n, s := range p.want {
			want[n] = s
		}
	} else {
		for n := range dirty {
			if s := p.want[n]; s != nil {
				want[n] = s
			}
		}
	}
	p.mu.Unlock()
	var res SyncResult
	var err error
	var cleanup []conntrack.Filter
	if full {
		res, cleanup, err = p.pl.full(ctx, want)
		res.Reason = reason
	} else {
		res, cleanup, err = p.pl.partial(ctx, dirty, want)
	}
	if err != nil {
		p.mu.Lock()
		p.full = true
		for n := range dirty {
			p.dirty[n] = true
		}
		if !pending.IsZero() && (p.pending.IsZero() || pending.Before(p.pending)) {
			p.pending = pending
		}
		p.triggers = append(triggers, p.triggers...)
		p.mu.Unlock()
		p.log.Error("sync failed", "full", full, "err", err)
		return SyncResult{Full: full, Reason: res.Reason}, fmt.Errorf("sync services in netns %q: %w", p.nsName(), err)
	}
	p.mu.Lock()
	if full {
		p.full = false
	}
	p.lastSync = time.Now()
	p.mu.Unlock()
	res.Triggers = triggers
	if p.cfg.NetNS != nil && len(cleanup) > 0 {
		n, err := deleteFlows(ctx, p.cfg.NetNS, cleanup)
		res.Flows = n
		if err != nil {
			p.log.Warn("conntrack cleanup failed", "err", err)
		}
	}
	res.Duration = time.Since(start)
	p.log.Info("synced", "full", res.Full, "reason", res.Reason, "services", res.Services, "rules", res.Rules, "flows_deleted", res.Flows, "duration", res.Duration)
	return res, nil
}

func (p *Proxy) nsName() string {
	if p.cfg.NetNS != nil {
		return p.cfg.NetNS.String()
	}
	return "backend"
}
