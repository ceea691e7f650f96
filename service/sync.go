package service

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
)

// canaryRule is the one rule of the canary chains: checking it is how the
// proxy sees the chain when nf_tables cannot be read directly.
var canaryRule = nat.Rule{Matches: []nat.Match{nat.Comment("podnet service proxy canary")}, Target: nat.Return}

// jump is a rule in a built-in chain that leads into the proxy's chains.
type jump struct {
	table, chain string
	rule         nat.Rule
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
	portals := nat.Rule{Matches: []nat.Match{nat.Comment("podnet service portals")}, Target: nat.Jump(c.Services())}
	post := nat.Rule{Matches: []nat.Match{nat.Comment("podnet postrouting rules")}, Target: nat.Jump(c.Postrouting())}
	newConn := nat.Conntrack{States: []string{"NEW"}}
	fPortals := nat.Rule{Matches: []nat.Match{newConn, nat.Comment("podnet service portals")}, Target: nat.Jump(c.Services())}
	fExt := nat.Rule{Matches: []nat.Match{newConn, nat.Comment("podnet externally-visible service portals")}, Target: nat.Jump(c.ExternalServices())}
	return []jump{
		{"nat", "PREROUTING", portals}, {"nat", "OUTPUT", portals}, {"nat", "POSTROUTING", post},
		{"filter", "INPUT", fPortals}, {"filter", "FORWARD", fPortals}, {"filter", "OUTPUT", fPortals},
		{"filter", "INPUT", fExt}, {"filter", "FORWARD", fExt},
	}
}

// fixedChains returns the proxy's shared chains of family f with their
// full contents for a full sync, given every Service's shared rules.
func (p *Proxy) fixedChains(f nat.Family, shared map[nat.Chain][]nat.Rule) []ownedChain {
	c := p.ch
	natC := func(n string) nat.Chain { return nat.Chain{Family: f, Table: nat.TableNAT, Name: n} }
	filC := func(n string) nat.Chain { return nat.Chain{Family: f, Table: nat.TableFilter, Name: n} }
	mark := p.r.mark
	services := append(slices.Clone(shared[natC(c.Services())]), nat.Rule{
		Matches: []nat.Match{nat.Comment("podnet service nodeports; NOTE: this must be the last rule in this chain"), nat.DstLocal},
		Target:  nat.Jump(c.NodePorts()),
	})
	return []ownedChain{
		{natC(c.MarkMasq()), []nat.Rule{{Target: nat.OrMark(mark)}}},
		{natC(c.Postrouting()), []nat.Rule{
			{Matches: []nat.Match{nat.Mark{Value: mark, Mask: mark, Not: true}}, Target: nat.Return},
			{Target: nat.XorMark(mark)},
			{Matches: []nat.Match{nat.Comment("podnet service traffic requiring SNAT")}, Target: nat.Masquerade{RandomFully: true}},
		}},
		{natC(c.Canary()), []nat.Rule{canaryRule}},
		{natC(c.NodePorts()), shared[natC(c.NodePorts())]},
		{natC(c.Services()), services},
		{filC(c.Canary()), []nat.Rule{canaryRule}},
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
// restore in quadratic time (see nat.Transaction.ZeroCounters). Smaller
// syncs leave other components' counters alone.
const zeroCountersChains = 1000

// syncFull rewrites every owned chain, removes stale ones and ensures the
// jumps from the built-in chains. It reads the nat and filter tables once
// (to find chains a previous run left and the jumps already in place).
func (p *Proxy) syncFull(ctx context.Context, want map[Name]*Service) (SyncResult, []nat.FlowFilter, error) {
	res := SyncResult{Full: true}
	renders := make(map[Name]*rendering, len(want))
	shared := map[nat.Chain][]nat.Rule{}
	tx := nat.NewTransaction()
	declared := map[nat.Chain]bool{}
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
		for _, t := range []nat.Table{nat.TableNAT, nat.TableFilter} {
			cur, err := p.be.Save(ctx, f, t)
			if err != nil {
				return res, nil, err
			}
			for _, c := range cur.Chains {
				ch := nat.Chain{Family: f, Table: t, Name: c.Name}
				if p.ch.Owns(c.Name) && !declared[ch] {
					tx.DeleteChain(ch)
				}
			}
			for _, j := range p.ch.jumps() {
				if nat.Table(j.table) != t {
					continue
				}
				spec, err := j.rule.Spec(f)
				if err != nil {
					return res, nil, err
				}
				n := 0
				if c := cur.Chain(j.chain); c != nil {
					for _, r := range c.Rules {
						if r == spec {
							n++
						}
					}
				}
				ch := nat.Chain{Family: f, Table: t, Name: j.chain}
				if n == 0 {
					tx.Insert(ch, 1, j.rule)
					res.Rules++
				}
				for ; n > 1; n-- {
					tx.Delete(ch, j.rule)
				}
			}
		}
	}
	if len(declared) >= zeroCountersChains {
		tx.ZeroCounters()
	}
	if err := p.be.Run(ctx, tx); err != nil {
		return res, nil, err
	}
	var filters []nat.FlowFilter
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
func (p *Proxy) syncPartial(ctx context.Context, dirty map[Name]bool, want map[Name]*Service) (SyncResult, []nat.FlowFilter, error) {
	var res SyncResult
	if len(dirty) == 0 {
		return res, nil, nil
	}
	tx := nat.NewTransaction()
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
		keep := map[nat.Chain]bool{}
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
			c    nat.Chain
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
	var filters []nat.FlowFilter
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
func (p *Proxy) canaryOK(ctx context.Context) (bool, error) {
	if k, ok := p.be.(interface{ NetNS() *netns.NS }); ok {
		if c, err := nft.Dial(k.NetNS()); err == nil {
			all := true
			for _, f := range p.r.families {
				for _, t := range []string{"nat", "filter"} {
					if ok, err := c.ChainExists(int(f), t, p.ch.Canary()); err != nil || !ok {
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
		for _, t := range []nat.Table{nat.TableNAT, nat.TableFilter} {
			ok, err := p.be.Check(ctx, nat.Chain{Family: f, Table: t, Name: p.ch.Canary()}, canaryRule)
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

// Cleanup removes every rule and chain the proxy owns (its jumps from the
// built-in chains, then its chains, found by reading the tables) in one
// transaction, and forgets what it wrote: the next Sync is a full one.
// Services stay in the model.
//
// Equivalent to: iptables-restore --noflush of -D for each jump and -F/-X
// for each owned chain (kube-proxy --cleanup)
func (p *Proxy) Cleanup(ctx context.Context) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	tx := nat.NewTransaction()
	for _, f := range p.r.families {
		for _, t := range []nat.Table{nat.TableNAT, nat.TableFilter} {
			cur, err := p.be.Save(ctx, f, t)
			if err != nil {
				return err
			}
			for _, c := range cur.Chains {
				if p.ch.Owns(c.Name) {
					tx.DeleteChain(nat.Chain{Family: f, Table: t, Name: c.Name})
					continue
				}
				for _, spec := range c.Rules {
					r, err := nat.ParseRule(f, spec)
					if err != nil {
						continue
					}
					if j, ok := r.Target.(nat.Jump); ok && p.ch.Owns(string(j)) {
						tx.Delete(nat.Chain{Family: f, Table: t, Name: c.Name}, r)
					}
				}
			}
		}
	}
	if err := p.be.Run(ctx, tx); err != nil {
		return err
	}
	p.written = map[Name]*record{}
	p.mu.Lock()
	p.full = true
	for n := range p.want {
		p.dirty[n] = true
	}
	p.mu.Unlock()
	return nil
}
