package nat

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/podnet/podnet"
)

// HostPort maps a port of the node to a pod, as the CNI portMappings
// capability describes it.
type HostPort struct {
	Protocol Protocol       // TCP, UDP or SCTP
	HostIP   netip.Addr     // optional: only traffic to this node address
	HostPort uint16         // required
	Pod      netip.AddrPort // the pod address and container port
}

// DefaultMasqMark is the mark bit the host-port rules use to ask for
// masquerade (portmap's default markMasqBit 13).
const DefaultMasqMark uint32 = 1 << 13

// HostPorts is the owned rule set that implements host ports, with the
// masquerade portmap users expect for hairpin traffic (a pod reaching
// itself through its host port) and for connections from the node itself
// to 127.0.0.1 (that one also needs net.ipv4.conf.all.route_localnet=1,
// which is not an iptables setting). Chains, in table nat:
//
//	PREFIX+"HOSTPORTS"      DNAT rules; reached from PREROUTING and OUTPUT for local destinations
//	PREFIX+"HOSTPORTS-MASQ" masquerades marked packets; reached from POSTROUTING
type HostPorts struct {
	Prefix string // "" means DefaultPrefix
	Mark   uint32 // masquerade mark bit; 0 means DefaultMasqMark
}

func (h HostPorts) prefix() string {
	if h.Prefix == "" {
		return DefaultPrefix
	}
	return h.Prefix
}

func (h HostPorts) mark() uint32 {
	if h.Mark == 0 {
		return DefaultMasqMark
	}
	return h.Mark
}

// DNATChain returns the name of the chain with the DNAT rules.
func (h HostPorts) DNATChain() string { return h.prefix() + "HOSTPORTS" }

// MasqChain returns the name of the masquerade chain.
func (h HostPorts) MasqChain() string { return h.prefix() + "HOSTPORTS-MASQ" }

// Rules returns the DNAT-chain rules of one mapping: mark hairpin and
// localhost traffic for masquerade, then DNAT.
//
// Equivalent to:
//
//	-A HOSTPORTS -s POD/32 -p tcp -m tcp --dport HP [-d HOSTIP/32] -j MARK --set-xmark M/M
//	-A HOSTPORTS -s 127.0.0.1/32 -p tcp -m tcp --dport HP -j MARK --set-xmark M/M   (IPv4)
//	-A HOSTPORTS [-d HOSTIP/32] -p tcp -m tcp --dport HP -j DNAT --to-destination POD:PORT
func (h HostPorts) Rules(m HostPort) ([]Rule, error) {
	if !m.Protocol.hasPorts() {
		return nil, podnet.Invalid("host port %d: protocol %q", m.HostPort, m.Protocol)
	}
	if m.HostPort == 0 || !m.Pod.Addr().IsValid() || m.Pod.Port() == 0 {
		return nil, podnet.Invalid("host port %d -> %s: missing port or pod address", m.HostPort, m.Pod)
	}
	pod := m.Pod.Addr().Unmap()
	f := FamilyOf(pod)
	var dst Addr
	if m.HostIP.IsValid() {
		hip := m.HostIP.Unmap()
		if FamilyOf(hip) != f {
			return nil, podnet.Invalid("host port %d: host IP %s and pod %s differ in family", m.HostPort, hip, pod)
		}
		dst = Addr{Prefix: netip.PrefixFrom(hip, hip.BitLen())}
	}
	ports := Ports{Dst: Port(m.HostPort)}
	mark := OrMark(h.mark())
	rules := []Rule{{Source: Addr{Prefix: netip.PrefixFrom(pod, pod.BitLen())}, Destination: dst, Protocol: m.Protocol, Matches: []Match{ports}, Target: mark}}
	if f == IPv4 {
		rules = append(rules, Rule{Source: Addr{Prefix: netip.MustParsePrefix("127.0.0.1/32")}, Destination: dst, Protocol: m.Protocol, Matches: []Match{ports}, Target: mark})
	}
	rules = append(rules, Rule{Destination: dst, Protocol: m.Protocol, Matches: []Match{ports}, Target: DNATTo(netip.AddrPortFrom(pod, m.Pod.Port()))})
	return rules, nil
}

// Set declares the complete host-port rule set of family f in tx: both
// chains with the rules of every mapping of that family, and the jumps
// from PREROUTING, OUTPUT and POSTROUTING. Mappings of the other family
// are skipped.
func (h HostPorts) Set(tx *Transaction, f Family, mappings []HostPort) {
	var rules []Rule
	for _, m := range mappings {
		if FamilyOf(m.Pod.Addr()) != f {
			continue
		}
		rs, err := h.Rules(m)
		if err != nil {
			tx.fail(err)
			return
		}
		rules = append(rules, rs...)
	}
	dn := Chain{f, TableNAT, h.DNATChain()}
	mq := Chain{f, TableNAT, h.MasqChain()}
	tx.Declare(dn, rules...)
	tx.Declare(mq, Rule{Matches: []Match{Mark{Value: h.mark(), Mask: h.mark()}}, Target: Masquerade{}})
	local := Rule{Matches: []Match{DstLocal}, Target: Jump(dn.Name)}
	tx.EnsureRule(Chain{f, TableNAT, "PREROUTING"}, true, local)
	tx.EnsureRule(Chain{f, TableNAT, "OUTPUT"}, true, local)
	tx.EnsureRule(Chain{f, TableNAT, "POSTROUTING"}, true, Rule{Target: Jump(mq.Name)})
}

// Apply makes the host-port rules exactly mappings, both families, in one
// transaction.
//
// Equivalent to: iptables-restore --noflush of the two chains and jumps
func (h HostPorts) Apply(ctx context.Context, b Backend, mappings []HostPort) error {
	tx := NewTransaction()
	for _, f := range []Family{IPv4, IPv6} {
		h.Set(tx, f, mappings)
	}
	if err := b.Run(ctx, tx); err != nil {
		return fmt.Errorf("apply %d host ports: %w", len(mappings), err)
	}
	return nil
}

// Delete removes the host-port chains and their jumps in both families; it
// succeeds when they are gone.
func (h HostPorts) Delete(ctx context.Context, b Backend) error {
	tx := NewTransaction()
	for _, f := range []Family{IPv4, IPv6} {
		dn := Chain{f, TableNAT, h.DNATChain()}
		mq := Chain{f, TableNAT, h.MasqChain()}
		local := Rule{Matches: []Match{DstLocal}, Target: Jump(dn.Name)}
		tx.RemoveRule(Chain{f, TableNAT, "PREROUTING"}, local)
		tx.RemoveRule(Chain{f, TableNAT, "OUTPUT"}, local)
		tx.RemoveRule(Chain{f, TableNAT, "POSTROUTING"}, Rule{Target: Jump(mq.Name)})
		tx.DeleteChain(dn)
		tx.DeleteChain(mq)
	}
	if err := b.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete host ports: %w", err)
	}
	return nil
}

// Endpoint is one backend of a VIP and the chain that holds its DNAT rule.
type Endpoint struct {
	Chain string         // owned chain for this endpoint, e.g. "PODNET-SEP-XXXX"
	Addr  netip.AddrPort // the backend
}

// VIP describes a virtual IP:port load-balanced over endpoints, in
// kube-proxy's layout: a service chain that picks an endpoint chain at
// random (statistic, probabilities 1/n, 1/(n-1) … 1) or by affinity
// (recent), and one chain per endpoint that marks hairpin traffic for
// masquerade and DNATs.
type VIP struct {
	Chain     string // owned service chain, e.g. "PODNET-SVC-XXXX"
	Protocol  Protocol
	Addr      netip.AddrPort
	Endpoints []Endpoint
	// AffinitySeconds > 0 sends a client to the endpoint it used last
	// within that many seconds (ClientIP session affinity).
	AffinitySeconds uint32
	// MasqMark, if non-zero, is or-ed into the mark of hairpin packets (an
	// endpoint reaching the VIP and being sent to itself) so a POSTROUTING
	// rule can masquerade them.
	MasqMark uint32
	Comment  string // optional comment on every rule
}

// DispatchRule returns the rule that sends traffic for the VIP into its
// service chain; it belongs in the caller's dispatch chain.
//
// Equivalent to: -d VIP/32 -p PROTO -m PROTO --dport PORT -j SVC
func (v VIP) DispatchRule() Rule {
	a := v.Addr.Addr().Unmap()
	return Rule{
		Destination: Addr{Prefix: netip.PrefixFrom(a, a.BitLen())},
		Protocol:    v.Protocol,
		Matches:     v.comment(Ports{Dst: Port(v.Addr.Port())}),
		Target:      Jump(v.Chain),
	}
}

func (v VIP) comment(ms ...Match) []Match {
	if v.Comment == "" {
		return ms
	}
	return append([]Match{Comment(v.Comment)}, ms...)
}

// Declare declares the service chain and the endpoint chains in tx, in the
// family of the VIP. A VIP without endpoints gets an empty service chain;
// rejecting its traffic (REJECT belongs in the filter table) is the
// caller's policy.
func (v VIP) Declare(tx *Transaction) {
	a := v.Addr.Addr().Unmap()
	if !a.IsValid() || v.Addr.Port() == 0 || !v.Protocol.hasPorts() {
		tx.fail(podnet.Invalid("vip %s/%s: needs an address, a port and tcp, udp or sctp", v.Addr, v.Protocol))
		return
	}
	f := FamilyOf(a)
	var svc []Rule
	n := len(v.Endpoints)
	if v.AffinitySeconds > 0 {
		for _, ep := range v.Endpoints {
			svc = append(svc, Rule{Matches: v.comment(Recent{Mode: RecentCheck, Name: ep.Chain, Seconds: v.AffinitySeconds, Reap: true}), Target: Jump(ep.Chain)})
		}
	}
	for i, ep := range v.Endpoints {
		r := Rule{Matches: v.comment(), Target: Jump(ep.Chain)}
		if left := n - i; left > 1 {
			r.Matches = append(r.Matches, Statistic{Probability: 1 / float64(left)})
		}
		svc = append(svc, r)
	}
	tx.Declare(Chain{f, TableNAT, v.Chain}, svc...)
	for _, ep := range v.Endpoints {
		ea := ep.Addr.Addr().Unmap()
		var rules []Rule
		if v.MasqMark != 0 {
			rules = append(rules, Rule{Source: Addr{Prefix: netip.PrefixFrom(ea, ea.BitLen())}, Matches: v.comment(), Target: OrMark(v.MasqMark)})
		}
		dnat := Rule{Protocol: v.Protocol, Matches: v.comment(), Target: DNATTo(netip.AddrPortFrom(ea, ep.Addr.Port()))}
		if v.AffinitySeconds > 0 {
			dnat.Matches = append(dnat.Matches, Recent{Mode: RecentSet, Name: ep.Chain})
		}
		rules = append(rules, dnat)
		tx.Declare(Chain{f, TableNAT, ep.Chain}, rules...)
	}
}
