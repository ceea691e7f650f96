package service

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// canaryRule is the one rule of the canary chains: checking it is how the
// proxy sees the chain when nf_tables cannot be read directly.
var canaryRule = iptables.Rule{Matches: []iptables.Match{iptables.Comment("podnet service proxy canary")}, Target: iptables.Return}

// jump is a rule in a built-in chain that leads into the proxy's chains.
type jump struct {
	table, chain string
	rule         iptables.Rule
}

// jumps returns the rules the proxy places in built-in chains.
//
// Equivalent to:
//
//	-A PREROUTING -m comment --comment "podnet service portals" -j PREFIX-SERVICES   (nat; also OUTPUT)
//	-A POSTROUTING -m comment --comment "podnet postrouting rules" -j PREFIX-POSTROUTING (nat)
//	-A INPUT -m conntrack --ctstate NEW -m comment --comment "podnet service portals" -j PREFIX-SERVICES (filter; also FORWARD, OUTPUT)
//	-A INPUT -m conntrack --ctstate NEW -m comment --comment "podnet externally-visible service portals" -j PREFIX-EXTERNAL-SERVICES (filter; also FORWARD)
func (c Chains) jumps() []jump {
	portals := iptables.Rule{Matches: []iptables.Match{iptables.Comment("podnet service portals")}, Target: iptables.Jump(c.Services())}
	post := iptables.Rule{Matches: []iptables.Match{iptables.Comment("podnet postrouting rules")}, Target: iptables.Jump(c.Postrouting())}
	newConn := iptables.Conntrack{States: []string{"NEW"}}
	fPortals := iptables.Rule{Matches: []iptables.Match{newConn, iptables.Comment("podnet service portals")}, Target: iptables.Jump(c.Services())}
	fExt := iptables.Rule{Matches: []iptables.Match{newConn, iptables.Comment("podnet externally-visible service portals")}, Target: iptables.Jump(c.ExternalServices())}
	return []jump{
		{"nat", "PREROUTING", portals}, {"nat", "OUTPUT", portals}, {"nat", "POSTROUTING", post},
		{"filter", "INPUT", fPortals}, {"filter", "FORWARD", fPortals}, {"filter", "OUTPUT", fPortals},
		{"filter", "INPUT", fExt}, {"filter", "FORWARD", fExt},
	}
}

// fixedChains returns the proxy's shared chains of family f with their
// full contents for a full sync, given every Service's shared rules.
func (p *Proxy) fixedChains(f iptables.Family, shared map[iptables.Chain][]iptables.Rule) []ownedChain {
	c := p.ch
	natC := func(n string) iptables.Chain { return iptables.Chain{Family: f, Table: iptables.TableNAT, Name: n} }
	filC := func(n string) iptables.Chain { return iptables.Chain{Family: f, Table: iptables.TableFilter, Name: n} }
	mark := p.r.mark
	services := append(slices.Clone(shared[natC(c.Services())]), iptables.Rule{
		Matches: []iptables.Match{iptables.Comment("podnet service nodeports; NOTE: this must be the last rule in this chain"), iptables.DstLocal},
		Target:  iptables.Jump(c.NodePorts()),
	})
	return []ownedChain{
		{natC(c.MarkMasq()), []iptables.Rule{{Target: iptables.OrMark(mark)}}},
		{natC(c.Postrouting()), []iptables.Rule{
			{Matches: []iptables.Match{iptables.Mark{Value: mark, Mask: mark, Not: true}}, Target: iptables.Return},
			{Target: iptables.XorMark(mark)},
			{Matches: []iptables.Match{iptables.Comment("podnet service traffic requiring SNAT")}, Target: iptables.Masquerade{RandomFully: true}},
		}},
		{natC(c.Canary()), []iptables.Rule{canaryRule}},
		{natC(c.NodePorts()), shared[natC(c.NodePorts())]},
		{natC(c.Services()), services},
		{filC(c.Canary()), []iptables.Rule{canaryRule}},
		{filC(c.Services()), shared[filC(c.Services())]},
		{filC(c.ExternalServices()), shared[filC(c.ExternalServices())]},
	}
}

func sortedNames[T any](m map[Name]T) []Name {
	names := make([]Name, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b Name) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return names
}

// zeroCountersChains is the size from which a full sync starts each table
// with -Z: without it iptables-nft 1.8 resolves the chains of a --noflush
// restore in quadratic time (see iptables.Transaction.ZeroCounters). Smaller
// syncs leave other components' counters alone.
const zeroCountersChains = 1000

// syncFull rewrites every owned chain, removes stale ones (Prune with the
// proxy's Owner) and ensures the jumps from the built-in chains. Applying
// it reads the nat and filter tables once, to find chains a previous run
// left and the jumps already in place.
func (p *Proxy) syncFull(ctx context.Context, want map[Name]*Service) (SyncResult, []conntrack.Filter, error) {
	res := SyncResult{Full: true}
	renders := make(map[Name]*rendering, len(want))
	shared := map[iptables.Chain][]iptables.Rule{}
	tx := iptables.NewTransaction()
	declared := map[iptables.Chain]bool{}
	for _, n := range sortedNames(want) {
		r, err := p.r.render(want[n])
		if err != nil {
			return res, nil, err
		}
		renders[n] = r
		for _, pl := range r.shared {
			shared[pl.chain] = append(shared[pl.chain], pl.rule)
		}
		for _, oc := range r.chains {
			tx.Declare(oc.chain, oc.rules...)
			declared[oc.chain] = true
			res.Rules += len(oc.rules)
		}
	}
	for _, f := range p.r.families {
		for _, oc := range p.fixedChains(f, shared) {
			tx.Declare(oc.chain, oc.rules...)
			declared[oc.chain] = true
			res.Rules += len(oc.rules)
		}
		for _, t := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
			tx.Prune(f, t, p.ch.Owns)
		}
		for _, j := range p.ch.jumps() {
			tx.EnsureRule(iptables.Chain{Family: f, Table: iptables.Table(j.table), Name: j.chain}, true, j.rule)
		}
	}
	if len(declared) >= zeroCountersChains {
		tx.ZeroCounters()
	}
	if err := p.be.Run(ctx, tx); err != nil {
		return res, nil, err
	}
	var filters []conntrack.Filter
	for n, old := range p.written {
		if renders[n] == nil {
			filters = append(filters, flowFilters(old.r, nil)...)
		}
	}
	newWritten := make(map[Name]*record, len(renders))
	for n, r := range renders {
		var old *rendering
		if rec := p.written[n]; rec != nil {
			old = rec.r
		}
		filters = append(filters, flowFilters(old, r)...)
		newWritten[n] = &record{svc: want[n], r: r}
	}
	p.written = newWritten
	res.Services = len(renders)
	return res, filters, nil
}

// syncPartial rewrites the chains of the dirty Services and edits the
// shared chains with -D and -I of those Services' rules only. It reads
// nothing back.
func (p *Proxy) syncPartial(ctx context.Context, dirty map[Name]bool, want map[Name]*Service) (SyncResult, []conntrack.Filter, error) {
	var res SyncResult
	if len(dirty) == 0 {
		return res, nil, nil
	}
	tx := iptables.NewTransaction()
	renders := map[Name]*rendering{}
	for _, n := range sortedNames(dirty) {
		var nr *rendering
		if s := want[n]; s != nil {
			var err error
			if nr, err = p.r.render(s); err != nil {
				return res, nil, err
			}
		}
		renders[n] = nr
		var or *rendering
		if rec := p.written[n]; rec != nil {
			or = rec.r
		}
		keep := map[iptables.Chain]bool{}
		if nr != nil {
			for _, oc := range nr.chains {
				tx.Declare(oc.chain, oc.rules...)
				keep[oc.chain] = true
				res.Rules += len(oc.rules)
			}
		}
		if or != nil {
			for _, oc := range or.chains {
				if !keep[oc.chain] {
					tx.DeleteChain(oc.chain)
				}
			}
		}
		type key struct {
			c    iptables.Chain
			spec string
		}
		have := map[key]int{}
		if or != nil {
			for _, pl := range or.shared {
				have[key{pl.chain, pl.spec}]++
			}
		}
		if nr != nil {
			for _, pl := range nr.shared {
				k := key{pl.chain, pl.spec}
				if have[k] > 0 {
					have[k]--
					continue
				}
				tx.Insert(pl.chain, 1, pl.rule)
				res.Rules++
			}
		}
		if or != nil {
			for _, pl := range or.shared {
				k := key{pl.chain, pl.spec}
				if have[k] > 0 {
					have[k]--
					tx.Delete(pl.chain, pl.rule)
				}
			}
		}
	}
	if err := p.be.Run(ctx, tx); err != nil {
		return res, nil, err
	}
	var filters []conntrack.Filter
	for n, nr := range renders {
		var or *rendering
		if rec := p.written[n]; rec != nil {
			or = rec.r
		}
		filters = append(filters, flowFilters(or, nr)...)
		if nr == nil {
			delete(p.written, n)
		} else {
			p.written[n] = &record{svc: want[n], r: nr}
		}
	}
	res.Services = len(renders)
	return res, filters, nil
}

// canaryOK reports whether the canary chains are still there: through
// nf_tables netlink when the backend is a namespace's kernel (tens of
// microseconds), else, or when that does not see them (legacy iptables),
// with iptables -C.
func (p *Proxy) canaryOK() (bool, error) {
	if k, ok := p.be.(interface{ NetNS() *netns.NS }); ok {
		if c, err := nft.Dial(k.NetNS()); err == nil {
			all := true
			for _, f := range p.r.families {
				for _, t := range []string{"nat", "filter"} {
					if ok, err := c.ChainExists(f, t, p.ch.Canary()); err != nil || !ok {
						all = false
					}
				}
			}
			c.Close()
			if all {
				return true, nil
			}
		}
	}
	for _, f := range p.r.families {
		for _, t := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
			ok, err := p.be.Check(iptables.Chain{Family: f, Table: t, Name: p.ch.Canary()}, canaryRule)
			if errors.Is(err, ErrNotFound) || err == nil && !ok {
				return false, nil
			}
			if err != nil {
				return false, err
			}
		}
	}
	return true, nil
}

// Cleanup removes every rule and chain the proxy owns (its chains, found by
// reading the tables, and every rule that jumps to them) in one
// transaction, and forgets what it wrote: the next Sync is a full one.
// Services stay in the model.
//
// Equivalent to: iptables-restore --noflush of -D for each jump and -F/-X
// for each owned chain (kube-proxy --cleanup)
func (p *Proxy) Cleanup(ctx context.Context) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if err := p.pl.cleanup(ctx); err != nil {
		return err
	}
	p.mu.Lock()
	p.full = true
	for n := range p.want {
		p.markDirty(n)
	}
	p.mu.Unlock()
	return nil
}

// cleanupTables is Cleanup in ModeIptables.
func (p *Proxy) cleanupTables(ctx context.Context) error {
	tx := iptables.NewTransaction()
	for _, f := range p.r.families {
		for _, t := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
			tx.Prune(f, t, p.ch.Owns)
		}
	}
	if err := p.be.Run(ctx, tx); err != nil {
		return err
	}
	p.written = map[Name]*record{}
	return nil
}
