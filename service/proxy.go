package service

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/conntrack"
)

// Config configures a Proxy. The zero value of every optional field is
// correct.
type Config struct {
	// Backend writes the rules: IPTables(iptables.NewKernel(ns)) for
	// kube-proxy's iptables layout, Nftables(ns) for native nftables
	// tables, IPTables(iptables.NewFake()) in unit tests. Required. The
	// proxy cleans up the conntrack flows of the backend's namespace.
	Backend Backend
	// ChainPrefix names the chains (and the nftables tables); ""
	// means DefaultChainPrefix, KubeChainPrefix gives kube-proxy's names.
	ChainPrefix string
	// NodeName selects the local endpoints for traffic policy Local, and
	// the endpoints hinted for this node (PreferSameNode).
	NodeName string
	// Zone is the node's topology.kubernetes.io/zone label: endpoints
	// hinted for it are preferred (see the package documentation,
	// Topology). SetZone changes it. Optional.
	Zone string
	// ClusterCIDRs are the pod networks (at most one per family). Traffic
	// to a cluster IP from outside them is masqueraded.
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs are the ranges cluster IPs are allocated from (the
	// API server's --service-cluster-ip-range, or its ServiceCIDR
	// objects). New connections to an address in them that no Service
	// has are dropped instead of leaving by the default route. Optional.
	ServiceCIDRs []netip.Prefix
	// NodePortAddresses are the node's addresses that serve node ports
	// (kube-proxy's --nodeport-addresses, resolved to addresses); nil
	// means every local address but loopback.
	NodePortAddresses []netip.Addr
	// NodeIPs are the node's primary addresses, at most one per family
	// (the first InternalIP of the Node object, as kube-proxy reads it).
	// When a Service's loadBalancerSourceRanges contain the node's
	// address, its load-balancer IPs are allowed sources too: a node
	// reaching a VIP-style load-balancer IP it holds as a local address
	// sends from that address (kube-proxy's allowFromNode). Optional.
	NodeIPs []netip.Addr
	// Families the proxy programs; nil means IPv4 only.
	Families []podnet.Family
	// MasqueradeBit is the packet-mark bit that asks for masquerade;
	// 0 means DefaultMasqueradeBit.
	MasqueradeBit int
	// ServeHealthChecks makes the proxy serve each Service's
	// HealthCheckNodePort on every address of the Backend's namespace,
	// as kube-proxy does: 200 and kube-proxy's JSON body while this node
	// has a ready endpoint of the Service, 503 otherwise. Close stops
	// them. Needs a Backend with a namespace.
	ServeHealthChecks bool
	// Logger receives one line per sync; nil discards.
	Logger *slog.Logger
}

// Proxy keeps the Service rules of a set of Services in one namespace:
// Update and Delete change its model, Sync writes what changed through
// the Backend. It is safe for concurrent use; syncs are serialised.
type Proxy struct {
	cfg   Config
	pl    plane
	r     renderer
	ch    Chains
	log   *slog.Logger
	mu    sync.Mutex // guards want, dirty, fullReason, pending, triggers, lastSync, lastFull
	want  map[Name]*Service
	dirty map[Name]bool
	// fullReason says why the next sync must be a full one; "" when it
	// need not.
	fullReason string
	// pending is when the oldest change not yet written arrived (zero when
	// none waits); lastSync when the last successful sync ended.
	pending, lastSync time.Time
	lastFull          time.Time     // when the last successful full sync ended
	triggers          []time.Time   // see RecordTrigger
	changed           chan struct{} // 1-buffered: a change arrived, for Run
	syncMu            sync.Mutex    // serialises Sync and Cleanup; guards synced
	// synced is the model as the last successful syncs wrote it: what
	// conntrack cleanup compares the next one with.
	synced map[Name]*Service
	// generation counts the successful syncs and cleanups: Verify's
	// answer is stale when it changed while the tables were read.
	generation int
	hc         *healthChecks // nil unless Config.ServeHealthChecks
}

// New validates cfg and returns a Proxy with no Services. Nothing is
// written until Sync; the first Sync is a full one.
func New(cfg Config) (*Proxy, error) {
	if cfg.Backend == nil {
		return nil, podnet.Invalid("service proxy: no Backend (IPTables or Nftables)")
	}
	if err := cfg.Backend.check(); err != nil {
		return nil, err
	}
	ch, err := NewChains(cfg.ChainPrefix)
	if err != nil {
		return nil, err
	}
	r, err := newRenderer(cfg, ch)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		cfg: cfg, ch: ch, log: log, r: r,
		want:       map[Name]*Service{},
		dirty:      map[Name]bool{},
		fullReason: "start",
		synced:     map[Name]*Service{},
		changed:    make(chan struct{}, 1),
	}
	p.pl = cfg.Backend.plane(&env{r: &p.r, log: log, wanted: p.wanted})
	if cfg.ServeHealthChecks {
		ns := cfg.Backend.NetNS()
		if ns == nil {
			return nil, podnet.Invalid("service proxy: ServeHealthChecks needs a Backend with a namespace")
		}
		p.hc = &healthChecks{ns: ns, log: log, ports: map[uint16]*healthPort{}}
	}
	return p, nil
}

// newRenderer checks the families, the masquerade bit and the cluster
// CIDRs of cfg.
func newRenderer(cfg Config, ch Chains) (renderer, error) {
	fams := cfg.Families
	if len(fams) == 0 {
		fams = []podnet.Family{podnet.IPv4}
	}
	for _, f := range fams {
		if !f.Valid() {
			return renderer{}, podnet.Invalid("service proxy: family %v", f)
		}
	}
	bit := cfg.MasqueradeBit
	if bit == 0 {
		bit = DefaultMasqueradeBit
	}
	if bit < 0 || bit > 31 {
		return renderer{}, podnet.Invalid("service proxy: masquerade bit %d outside 0-31", bit)
	}
	cidr := map[podnet.Family]netip.Prefix{}
	for _, c := range cfg.ClusterCIDRs {
		if !c.IsValid() {
			return renderer{}, podnet.Invalid("service proxy: invalid cluster CIDR")
		}
		f := podnet.FamilyOf(c.Addr())
		if _, dup := cidr[f]; dup {
			return renderer{}, podnet.Invalid("service proxy: two %v cluster CIDRs", f)
		}
		cidr[f] = c.Masked()
	}
	svcCIDRs, err := checkServiceCIDRs(fams, cfg.ServiceCIDRs)
	if err != nil {
		return renderer{}, err
	}
	for _, a := range cfg.NodePortAddresses {
		if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || !slices.Contains(fams, podnet.FamilyOf(a)) {
			return renderer{}, podnet.Invalid("service proxy: node port address %s: not a unicast address of a family the proxy programs", a)
		}
	}
	nodeIPs := map[podnet.Family]netip.Addr{}
	for _, a := range cfg.NodeIPs {
		f := podnet.FamilyOf(a)
		if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || !slices.Contains(fams, f) {
			return renderer{}, podnet.Invalid("service proxy: node IP %s: not a unicast address of a family the proxy programs", a)
		}
		if _, dup := nodeIPs[f]; dup {
			return renderer{}, podnet.Invalid("service proxy: two %v node IPs", f)
		}
		nodeIPs[f] = a.Unmap()
	}
	return renderer{chains: ch, families: slices.Clone(fams), cidr: cidr, serviceCIDRs: svcCIDRs, nodePortAddrs: slices.Clone(cfg.NodePortAddresses),
		nodeIPs: nodeIPs, node: cfg.NodeName, zone: cfg.Zone, mark: 1 << bit}, nil
}

// SetZone changes the node's zone (its topology.kubernetes.io/zone label;
// "" when it has none). Every Service is written again at the next Sync,
// as the endpoints its hints prefer may change.
func (p *Proxy) SetZone(zone string) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if p.r.zone == zone {
		return
	}
	p.r.zone = zone
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := range p.want {
		p.markDirty(n)
	}
}

// SetServiceCIDRs replaces Config.ServiceCIDRs (as the API server's
// ServiceCIDR objects change). It validates cidrs as New does and changes
// nothing when they are the same; otherwise the next Sync is a full one
// (reason "service CIDRs changed"), since their drop rules are fixed.
func (p *Proxy) SetServiceCIDRs(cidrs []netip.Prefix) error {
	masked, err := checkServiceCIDRs(p.r.families, cidrs)
	if err != nil {
		return err
	}
	p.syncMu.Lock()
	same := slices.Equal(p.r.serviceCIDRs, masked)
	if !same {
		p.r.serviceCIDRs = masked
	}
	p.syncMu.Unlock()
	if !same {
		p.requestFull("service CIDRs changed")
	}
	return nil
}

// checkServiceCIDRs validates service CIDRs against the families a proxy
// programs and returns them masked, sorted and without repeats.
func checkServiceCIDRs(fams []podnet.Family, cidrs []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		if !c.IsValid() || !slices.Contains(fams, podnet.FamilyOf(c.Addr())) {
			return nil, podnet.Invalid("service proxy: service CIDR %s: invalid, or of a family the proxy does not program", c)
		}
		out = append(out, c.Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(out), nil
}

// wanted returns the Service the model holds under n, or nil.
func (p *Proxy) wanted(n Name) *Service {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.want[n]
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
	for _, ip := range slices.Concat(s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs) {
		if !slices.Contains(p.r.families, podnet.FamilyOf(ip)) {
			return podnet.Invalid("service %q: %s is %v, which the proxy does not program", s.Name.String(), ip, podnet.FamilyOf(ip))
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
func (p *Proxy) Families() []podnet.Family { return slices.Clone(p.r.families) }

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
	Reason   string        // why a full sync: "start", "previous sync failed", "canary chain missing", "tables differ from what was written", "periodic", "cleanup"
	Services int           // Services whose rules were (re)written or removed
	Rules    int           // rule lines written
	Flows    int           // conntrack flows deleted
	Duration time.Duration // time spent
	// Triggers are the times given to RecordTrigger before this sync
	// started: the changes it put in force.
	Triggers []time.Time
}

// Sync writes the changes since the last successful sync through the
// Backend in one transaction: one iptables-restore per family, or one
// nf_tables netlink batch. A partial sync writes only what the changed
// Services contribute. Sync makes a full sync — everything the proxy owns
// rewritten, stale objects removed — the first time, after a failed sync,
// and when the canary is gone (someone flushed the tables). After a
// successful sync it deletes the UDP conntrack flows that would otherwise
// keep reaching removed endpoints or the rejection of a Service that had
// none, deciding them from the Services before and after.
//
// In ModeIptables a full sync of 1000 chains or more starts each table
// with -Z, resetting the packet counters of the namespace's nat and
// filter rules: it keeps iptables-nft's restore linear (see
// iptables.Transaction.ZeroCounters).
//
// Equivalent to: iptables-restore --noflush, or nft -f (kube-proxy's syncProxyRules)
func (p *Proxy) Sync(ctx context.Context) (SyncResult, error) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	start := time.Now()
	full, reason, err := p.syncKind()
	if err != nil {
		return SyncResult{}, fmt.Errorf("sync services in netns %q: check canary: %w", p.nsName(), err)
	}
	tk := p.take(full)
	res := SyncResult{Full: full}
	if full {
		res.Reason = reason
		res.Rules, err = p.pl.full(ctx, tk.want)
	} else {
		// partial may add Services that wait for an entry a change
		// lets go.
		res.Rules, err = p.pl.partial(ctx, tk.want)
	}
	res.Services = len(tk.want)
	if err != nil {
		p.giveBack(tk)
		p.serveHealth(false)
		p.log.Error("sync failed", "full", full, "err", err)
		return SyncResult{Full: full, Reason: res.Reason}, fmt.Errorf("sync services in netns %q: %w", p.nsName(), err)
	}
	p.mu.Lock()
	if full {
		p.fullReason = ""
		p.lastFull = time.Now()
	}
	p.lastSync = time.Now()
	p.mu.Unlock()
	p.generation++
	res.Triggers = tk.triggers
	res.Flows = p.cleanFlows(ctx, full, tk.want)
	p.serveHealth(true)
	res.Duration = time.Since(start)
	p.log.Info("synced", "full", res.Full, "reason", res.Reason, "services", res.Services, "rules", res.Rules, "flows_deleted", res.Flows, "duration", res.Duration)
	return res, nil
}

// serveHealth brings the health-check node ports in line with the
// Services as written; healthy says whether the last sync succeeded.
// p.syncMu must be held.
func (p *Proxy) serveHealth(healthy bool) {
	if p.hc != nil {
		p.hc.update(healthStates(p.synced, p.r.node, healthy))
	}
}

// Close stops what the proxy serves (its health-check node ports); a
// later Sync serves them again. The rules stay in force.
func (p *Proxy) Close() error {
	if p.hc != nil {
		p.hc.close()
	}
	return nil
}

// syncKind decides between a full and a partial sync, and why a full one.
func (p *Proxy) syncKind() (full bool, reason string, err error) {
	p.mu.Lock()
	reason = p.fullReason
	p.mu.Unlock()
	if reason != "" {
		return true, reason, nil
	}
	ok, err := p.pl.intact()
	if err != nil {
		return false, "", err
	}
	if !ok {
		return true, "canary chain missing", nil
	}
	return false, "", nil
}

// taken is the changes one sync takes from the model.
type taken struct {
	dirty    map[Name]bool
	pending  time.Time
	triggers []time.Time
	// want is every Service for a full sync; for a partial one, the
	// dirty Services, nil for those deleted.
	want map[Name]*Service
}

// take takes the changes waiting for a sync.
func (p *Proxy) take(full bool) taken {
	p.mu.Lock()
	defer p.mu.Unlock()
	tk := taken{dirty: p.dirty, pending: p.pending, triggers: p.triggers}
	p.dirty, p.pending, p.triggers = map[Name]bool{}, time.Time{}, nil
	if full {
		tk.want = maps.Clone(p.want)
		return tk
	}
	tk.want = make(map[Name]*Service, len(tk.dirty))
	for n := range tk.dirty {
		tk.want[n] = p.want[n]
	}
	return tk
}

// giveBack puts the changes of a failed sync back; the next one is full.
func (p *Proxy) giveBack(tk taken) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fullReason = "previous sync failed"
	for n := range tk.dirty {
		p.dirty[n] = true
	}
	if !tk.pending.IsZero() && (p.pending.IsZero() || tk.pending.Before(p.pending)) {
		p.pending = tk.pending
	}
	p.triggers = append(tk.triggers, p.triggers...)
}

// cleanFlows records what a successful sync wrote and deletes the UDP
// flows its changes strand, returning how many it deleted.
func (p *Proxy) cleanFlows(ctx context.Context, full bool, want map[Name]*Service) int {
	var filters []conntrack.Filter
	changed := want
	if full {
		changed = maps.Clone(want)
		for n := range p.synced {
			if _, ok := want[n]; !ok {
				changed[n] = nil
			}
		}
	}
	for n, s := range changed {
		filters = append(filters, flowFilters(p.r.udpPorts(p.synced[n]), p.r.udpPorts(s))...)
		if s == nil {
			delete(p.synced, n)
		} else {
			p.synced[n] = s
		}
	}
	ns := p.cfg.Backend.NetNS()
	if ns == nil || len(filters) == 0 {
		return 0
	}
	n, err := deleteFlows(ctx, ns, filters)
	if err != nil {
		p.log.Warn("conntrack cleanup failed", "err", err)
	}
	return n
}

func (p *Proxy) nsName() string {
	if ns := p.cfg.Backend.NetNS(); ns != nil {
		return ns.String()
	}
	return "backend"
}

// Verify reads the proxy's tables back and reports whether they hold what
// the last syncs wrote; when they do not, the next Sync is a full one
// (reason "tables differ from what was written"), and Run starts it at
// once. In ModeNftables it compares every element of every set and map
// the proxy owns and the rules of its fixed chains, so a set flushed, an
// element deleted or a rule removed by hand is seen; in ModeIptables it
// checks the canary chains, as every Sync does. Run calls it every
// SyncPeriod. Its cost grows with the Services (one dump of the
// tables); docs/performance.md has the figure.
//
// The tables are read without holding up syncs; when one ends meanwhile,
// the answer is stale and Verify reports true (the next period checks
// again).
func (p *Proxy) Verify(ctx context.Context) (bool, error) {
	p.syncMu.Lock()
	check, gen := p.pl.verifier(), p.generation
	p.syncMu.Unlock()
	ok, err := check()
	p.syncMu.Lock()
	stale := p.generation != gen
	p.syncMu.Unlock()
	switch {
	case stale:
		return true, nil
	case err != nil:
		return false, fmt.Errorf("verify services in netns %q: %w", p.nsName(), err)
	case !ok:
		p.requestFull("tables differ from what was written")
	}
	return ok, nil
}

// requestFull makes the next sync a full one and wakes Run.
func (p *Proxy) requestFull(reason string) {
	p.mu.Lock()
	if p.fullReason == "" {
		p.fullReason = reason
	}
	if p.pending.IsZero() {
		p.pending = time.Now()
	}
	p.mu.Unlock()
	p.notify()
}

// Cleanup removes every rule, chain and table the proxy owns (found by
// reading the tables, so what an earlier run left goes too) in one
// transaction, and forgets what it wrote: the next Sync is a full one.
// Services stay in the model.
//
// Equivalent to: iptables-restore --noflush of -D for each jump and -F/-X
// for each owned chain, or nft delete table (kube-proxy --cleanup)
func (p *Proxy) Cleanup(ctx context.Context) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if err := p.pl.cleanup(ctx); err != nil {
		return err
	}
	p.synced = map[Name]*Service{}
	p.generation++
	p.mu.Lock()
	p.fullReason = "cleanup"
	for n := range p.want {
		p.markDirty(n)
	}
	p.mu.Unlock()
	return nil
}
