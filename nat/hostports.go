package nat

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// HostPort maps a port of the node to a pod, as the CNI portMappings
// capability describes it.
type HostPort struct {
	Protocol iptables.Protocol // TCP, UDP or SCTP
	HostIP   netip.Addr        // optional: only traffic to this node address
	HostPort uint16            // required
	Pod      netip.AddrPort    // the pod address and container port
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
//	PREFIX-HOSTPORTS       DNAT rules; reached from PREROUTING and OUTPUT for local destinations
//	PREFIX-HOSTPORTS-MASQ  masquerades marked packets; reached from POSTROUTING
type HostPorts struct {
	Prefix string // "" means DefaultPrefix
	Mark   uint32 // masquerade mark bit; 0 means DefaultMasqMark
}

func (h HostPorts) mark() uint32 {
	if h.Mark == 0 {
		return DefaultMasqMark
	}
	return h.Mark
}

// DNATChain returns the name of the chain with the DNAT rules.
func (h HostPorts) DNATChain() string { return prefixOr(h.Prefix) + "-HOSTPORTS" }

// MasqChain returns the name of the masquerade chain.
func (h HostPorts) MasqChain() string { return prefixOr(h.Prefix) + "-HOSTPORTS-MASQ" }

// Rules returns the DNAT-chain rules of one mapping: mark hairpin and
// localhost traffic for masquerade, then DNAT.
//
// Equivalent to:
//
//	-A HOSTPORTS -s POD/32 -p tcp -m tcp --dport HP [-d HOSTIP/32] -j MARK --set-xmark M/M
//	-A HOSTPORTS -s 127.0.0.1/32 -p tcp -m tcp --dport HP -j MARK --set-xmark M/M   (IPv4)
//	-A HOSTPORTS [-d HOSTIP/32] -p tcp -m tcp --dport HP -j DNAT --to-destination POD:PORT
func (h HostPorts) Rules(m HostPort) ([]iptables.Rule, error) {
	if !m.Protocol.HasPorts() {
		return nil, podnet.Invalid("host port %d: protocol %q", m.HostPort, m.Protocol)
	}
	if m.HostPort == 0 || !m.Pod.Addr().IsValid() || m.Pod.Port() == 0 {
		return nil, podnet.Invalid("host port %d -> %s: missing port or pod address", m.HostPort, m.Pod)
	}
	pod := m.Pod.Addr().Unmap()
	f := iptables.FamilyOf(pod)
	var dst iptables.Addr
	if m.HostIP.IsValid() {
		hip := m.HostIP.Unmap()
		if iptables.FamilyOf(hip) != f {
			return nil, podnet.Invalid("host port %d: host IP %s and pod %s differ in family", m.HostPort, hip, pod)
		}
		dst = iptables.Addr{Prefix: netip.PrefixFrom(hip, hip.BitLen())}
	}
	ports := iptables.Ports{Dst: iptables.Port(m.HostPort)}
	mark := iptables.OrMark(h.mark())
	rules := []iptables.Rule{{Source: iptables.Addr{Prefix: netip.PrefixFrom(pod, pod.BitLen())}, Destination: dst, Protocol: m.Protocol, Matches: []iptables.Match{ports}, Target: mark}}
	if f == iptables.IPv4 {
		rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: netip.MustParsePrefix("127.0.0.1/32")}, Destination: dst, Protocol: m.Protocol, Matches: []iptables.Match{ports}, Target: mark})
	}
	rules = append(rules, iptables.Rule{Destination: dst, Protocol: m.Protocol, Matches: []iptables.Match{ports}, Target: iptables.DNATTo(netip.AddrPortFrom(pod, m.Pod.Port()))})
	return rules, nil
}

// Set declares the complete host-port rule set of family f in tx: both
// chains with the rules of every mapping of that family, and the jumps
// from PREROUTING, OUTPUT and POSTROUTING. Mappings of the other family
// are skipped. An invalid mapping is returned as an error matching
// ErrInvalid, and tx is left as it was.
func (h HostPorts) Set(tx *iptables.Transaction, f iptables.Family, mappings []HostPort) error {
	var rules []iptables.Rule
	for _, m := range mappings {
		if iptables.FamilyOf(m.Pod.Addr()) != f {
			continue
		}
		rs, err := h.Rules(m)
		if err != nil {
			return err
		}
		rules = append(rules, rs...)
	}
	dn := natChain(f, h.DNATChain())
	mq := natChain(f, h.MasqChain())
	tx.Declare(dn, rules...)
	tx.Declare(mq, iptables.Rule{Matches: []iptables.Match{iptables.Mark{Value: h.mark(), Mask: h.mark()}}, Target: iptables.Masquerade{}})
	local := iptables.Rule{Matches: []iptables.Match{iptables.DstLocal}, Target: iptables.Jump(dn.Name)}
	tx.EnsureRule(natChain(f, "PREROUTING"), true, local)
	tx.EnsureRule(natChain(f, "OUTPUT"), true, local)
	tx.EnsureRule(natChain(f, "POSTROUTING"), true, iptables.Rule{Target: iptables.Jump(mq.Name)})
	return nil
}

// Apply makes the host-port rules exactly mappings, both families, in one
// transaction.
//
// Equivalent to: iptables-restore --noflush of the two chains and jumps
func (h HostPorts) Apply(ctx context.Context, b iptables.Backend, mappings []HostPort) error {
	tx := iptables.NewTransaction()
	if err := validateMark(h.Mark); err != nil {
		return err
	}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if err := h.Set(tx, f, mappings); err != nil {
			return err
		}
	}
	if err := b.Run(ctx, tx); err != nil {
		return fmt.Errorf("apply %d host ports: %w", len(mappings), err)
	}
	return nil
}

// Delete removes the host-port chains and their jumps in both families; it
// succeeds when they are gone.
//
// Equivalent to: iptables -t nat -D PREROUTING|OUTPUT|POSTROUTING ... ; iptables -t nat -X CHAIN
func (h HostPorts) Delete(ctx context.Context, b iptables.Backend) error {
	tx := iptables.NewTransaction()
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		dn := natChain(f, h.DNATChain())
		mq := natChain(f, h.MasqChain())
		local := iptables.Rule{Matches: []iptables.Match{iptables.DstLocal}, Target: iptables.Jump(dn.Name)}
		tx.RemoveRule(natChain(f, "PREROUTING"), local)
		tx.RemoveRule(natChain(f, "OUTPUT"), local)
		tx.RemoveRule(natChain(f, "POSTROUTING"), iptables.Rule{Target: iptables.Jump(mq.Name)})
		tx.DeleteChain(dn)
		tx.DeleteChain(mq)
	}
	if err := b.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete host ports: %w", err)
	}
	return nil
}

// validateMark accepts 0 (DefaultMasqMark) or a single mark bit.
func validateMark(m uint32) error {
	if m&(m-1) != 0 {
		return podnet.Invalid("host ports: mark %#x is not a single bit", m)
	}
	return nil
}

func natChain(f iptables.Family, name string) iptables.Chain {
	return iptables.Chain{Family: f, Table: iptables.TableNAT, Name: name}
}
