package service

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/sysctl"
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
//	-A FORWARD -m comment --comment "podnet forwarding rules" -j PREFIX-FORWARD (filter)
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
		{"filter", "FORWARD", iptables.Rule{Matches: []iptables.Match{iptables.Comment("podnet forwarding rules")}, Target: iptables.Jump(c.Forward())}},
	}
}

// fixedChains returns the proxy's shared chains of family f with their
// full contents for a full sync, given every Service's shared rules.
func (ip *iptablesPlane) fixedChains(f podnet.Family, shared map[iptables.Chain][]iptables.Rule) []ownedChain {
	c := ip.env.r.chains
	natC := func(n string) iptables.Chain { return iptables.Chain{Family: f, Table: iptables.TableNAT, Name: n} }
	filC := func(n string) iptables.Chain { return iptables.Chain{Family: f, Table: iptables.TableFilter, Name: n} }
	mark := ip.env.r.mark
	var services []iptables.Rule
	for _, dst := range ip.env.r.nodePortMatches(f) {
		dst.Matches = append([]iptables.Match{iptables.Comment("podnet service nodeports; NOTE: this must be the last rule in this chain")}, dst.Matches...)
		dst.Target = iptables.Jump(c.NodePorts())
		services = append(services, dst)
	}
	services = append(slices.Clone(shared[natC(c.Services())]), services...)
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
		{filC(c.Services()), append(slices.Clone(shared[filC(c.Services())]), ip.serviceCIDRDrops(f)...)},
		{filC(c.ExternalServices()), shared[filC(c.ExternalServices())]},
		{filC(c.Forward()), ip.forwardRules()},
	}
}

// forwardRules are the Forward chain's, as kube-proxy's iptables mode
// writes KUBE-FORWARD: a packet conntrack calls invalid is dropped
// (unless net.netfilter.nf_conntrack_tcp_be_liberal is on in the
// namespace: then the kernel lets out-of-window TCP through and so does
// the proxy); Service traffic marked for masquerade and established
// connections are accepted, whatever the FORWARD policy.
func (ip *iptablesPlane) forwardRules() []iptables.Rule {
	mark := ip.env.r.mark
	var rules []iptables.Rule
	if !ip.tcpLiberal() {
		rules = append(rules, iptables.Rule{Matches: []iptables.Match{iptables.Conntrack{States: []string{"INVALID"}}}, Target: iptables.Drop})
	}
	return append(rules,
		iptables.Rule{Matches: []iptables.Match{iptables.Comment("podnet forwarding rules"), iptables.Mark{Value: mark, Mask: mark}}, Target: iptables.Accept},
		iptables.Rule{Matches: []iptables.Match{iptables.Comment("podnet forwarding conntrack rule"), iptables.Conntrack{States: []string{"RELATED", "ESTABLISHED"}}}, Target: iptables.Accept})
}

// tcpLiberal reports whether the backend's namespace has conntrack's TCP
// window tracking relaxed (false without a namespace, or when it cannot
// be read: kube-proxy's default).
func (ip *iptablesPlane) tcpLiberal() bool {
	k, ok := ip.be.(interface{ NetNS() *netns.NS })
	if !ok {
		return false
	}
	v, err := sysctl.Get(k.NetNS(), "net.netfilter.nf_conntrack_tcp_be_liberal")
	return err == nil && strings.TrimSpace(v) == "1"
}

// serviceCIDRDrops drops new connections to the service CIDRs of family
// f that no rule before translated or rejected: unallocated addresses.
// They end the filter SERVICES chain; a partial sync inserts above them.
func (ip *iptablesPlane) serviceCIDRDrops(f podnet.Family) []iptables.Rule {
	var rules []iptables.Rule
	for _, c := range ip.env.r.serviceCIDRs {
		if podnet.FamilyOf(c.Addr()) == f {
			rules = append(rules, iptables.Rule{Destination: iptables.Addr{Prefix: c},
				Matches: []iptables.Match{iptables.Comment("unallocated service IP")}, Target: iptables.Drop})
		}
	}
	return rules
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

// iptablesPlane is ModeIptables: what it wrote, per Service, so that a
// partial sync edits the shared chains rule by rule without reading them.
type iptablesPlane struct {
	env     *env
	be      iptables.Backend
	written map[Name]*rendering
}

// full rewrites every owned chain, removes stale ones (Prune with the
// proxy's Owner) and ensures the jumps from the built-in chains. Applying
// it reads the nat and filter tables once, to find chains a previous run
// left and the jumps already in place.
func (ip *iptablesPlane) full(ctx context.Context, want map[Name]*Service) (int, error) {
	renders := make(map[Name]*rendering, len(want))
	shared := map[iptables.Chain][]iptables.Rule{}
	tx := iptables.NewTransaction()
	chains, rules := 0, 0
	declare := func(oc ownedChain) {
		tx.Declare(oc.chain, oc.rules...)
		chains++
		rules += len(oc.rules)
	}
	for _, n := range sortedNames(want) {
		r, err := ip.env.r.render(want[n])
		if err != nil {
			return 0, err
		}
		renders[n] = r
		for _, pl := range r.shared {
			shared[pl.chain] = append(shared[pl.chain], pl.rule)
		}
		for _, oc := range r.chains {
			declare(oc)
		}
	}
	ch := ip.env.r.chains
	for _, f := range ip.env.r.families {
		for _, oc := range ip.fixedChains(f, shared) {
			declare(oc)
		}
		for _, t := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
			tx.Prune(f, t, ch.Owns)
		}
		for _, j := range ch.jumps() {
			tx.EnsureRule(iptables.Chain{Family: f, Table: iptables.Table(j.table), Name: j.chain}, true, j.rule)
		}
	}
	if chains >= zeroCountersChains {
		tx.ZeroCounters()
	}
	if err := ip.be.Run(ctx, tx); err != nil {
		return 0, err
	}
	ip.written = renders
	return rules, nil
}

// partial rewrites the chains of the changed Services and edits the
// shared chains with -D and -I of those Services' rules only. It reads
// nothing back.
func (ip *iptablesPlane) partial(ctx context.Context, changed map[Name]*Service) (int, error) {
	if len(changed) == 0 {
		return 0, nil
	}
	tx := iptables.NewTransaction()
	renders := map[Name]*rendering{}
	rules := 0
	for _, n := range sortedNames(changed) {
		var nr *rendering
		if s := changed[n]; s != nil {
			var err error
			if nr, err = ip.env.r.render(s); err != nil {
				return 0, err
			}
		}
		renders[n] = nr
		rules += editService(tx, ip.written[n], nr)
	}
	if err := ip.be.Run(ctx, tx); err != nil {
		return 0, err
	}
	for n, nr := range renders {
		if nr == nil {
			delete(ip.written, n)
		} else {
			ip.written[n] = nr
		}
	}
	return rules, nil
}

// editService queues the change of one Service's rules from or to nr
// (either may be nil) and returns the rules it writes: its own chains
// declared anew, chains it no longer has deleted, and its rules in the
// shared chains inserted or deleted where they differ.
func editService(tx *iptables.Transaction, or, nr *rendering) int {
	rules := 0
	keep := map[iptables.Chain]bool{}
	if nr != nil {
		for _, oc := range nr.chains {
			tx.Declare(oc.chain, oc.rules...)
			keep[oc.chain] = true
			rules += len(oc.rules)
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
			if k := (key{pl.chain, pl.spec}); have[k] > 0 {
				have[k]--
				continue
			}
			tx.Insert(pl.chain, 1, pl.rule)
			rules++
		}
	}
	if or != nil {
		for _, pl := range or.shared {
			if k := (key{pl.chain, pl.spec}); have[k] > 0 {
				have[k]--
				tx.Delete(pl.chain, pl.rule)
			}
		}
	}
	return rules
}

// intact reports whether the canary chains are still there: through
// nf_tables netlink when the backend is a namespace's kernel (tens of
// microseconds), else, or when that does not see them (legacy iptables),
// with iptables -C.
func (ip *iptablesPlane) intact() (bool, error) {
	ch := ip.env.r.chains
	if k, ok := ip.be.(interface{ NetNS() *netns.NS }); ok {
		if c, err := nft.Dial(k.NetNS()); err == nil {
			all := true
			for _, f := range ip.env.r.families {
				for _, t := range []string{"nat", "filter"} {
					if ok, err := c.ChainExists(f, t, ch.Canary()); err != nil || !ok {
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
	for _, f := range ip.env.r.families {
		for _, t := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
			ok, err := ip.be.Check(iptables.Chain{Family: f, Table: t, Name: ch.Canary()}, canaryRule)
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

// verifier checks the canary, as intact does: reading the tables back
// (iptables-save) costs seconds at scale, and the canary covers what
// flushes them.
func (ip *iptablesPlane) verifier() func() (bool, error) { return ip.intact }

// cleanup removes every chain the proxy owns and the jumps to them.
func (ip *iptablesPlane) cleanup(ctx context.Context) error {
	tx := iptables.NewTransaction()
	for _, f := range ip.env.r.families {
		for _, t := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
			tx.Prune(f, t, ip.env.r.chains.Owns)
		}
	}
	if err := ip.be.Run(ctx, tx); err != nil {
		return err
	}
	ip.written = map[Name]*rendering{}
	return nil
}

func (ip *iptablesPlane) stats() (services, endpoints int) {
	for _, r := range ip.written {
		services++
		endpoints += r.endpoints
	}
	return services, endpoints
}
