package service

import (
	"net/netip"
	"strings"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// DefaultChainPrefix starts the names of the proxy's chains unless
// Config.ChainPrefix says otherwise: PODNET-SERVICES, PODNET-SVC-…, so the
// proxy can run beside kube-proxy, whose chains start with "KUBE".
const DefaultChainPrefix = "PODNET"

// KubeChainPrefix gives kube-proxy's exact chain names (KUBE-SERVICES,
// KUBE-SVC-ERIFXISQEP7F7OF4 …), for a node where podnet replaces
// kube-proxy.
const KubeChainPrefix = "KUBE"

// DefaultMasqueradeBit is the packet mark bit kube-proxy uses to ask for
// masquerade (0x4000).
const DefaultMasqueradeBit = 14

// Chains names the chains of one prefix. The per-Service-port chains are
// PREFIX-SVC-, -SVL-, -EXT- and -SEP- followed by 16 characters of a
// base32 SHA-256 hash, as kube-proxy names them, so a name is stable for a
// Service port and ≤ 28 bytes.
type Chains struct {
	prefix string
}

// NewChains returns the chain names for prefix ("" means
// DefaultChainPrefix). A prefix is at most 7 bytes, so that
// PREFIX-SVC-<16 characters> fits in iptables' 28, and has no '-'.
func NewChains(prefix string) (Chains, error) {
	if prefix == "" {
		prefix = DefaultChainPrefix
	}
	c := Chains{prefix: prefix}
	if len(prefix) > 7 {
		return Chains{}, podnet.Invalid("chain prefix %q: longer than 7 bytes (PREFIX-SVC-<16 characters> must fit in 28)", prefix)
	}
	if err := iptables.ValidateChainName(c.ExternalServices()); err != nil {
		return Chains{}, podnet.Invalid("chain prefix %q: %v", prefix, err)
	}
	if strings.Contains(prefix, "-") {
		return Chains{}, podnet.Invalid("chain prefix %q: contains '-'", prefix)
	}
	return c, nil
}

// Prefix returns the prefix, e.g. "PODNET".
func (c Chains) Prefix() string { return c.prefix }

// Services is the dispatch chain in the nat table (reached from PREROUTING
// and OUTPUT) with one rule per cluster or external IP and port, and in
// the filter table (reached from INPUT, FORWARD and OUTPUT for new
// connections) with the REJECT rules of Services without endpoints.
//
// Equivalent to: KUBE-SERVICES
func (c Chains) Services() string { return c.prefix + "-SERVICES" }

// ExternalServices is the filter chain that rejects or drops traffic to
// NodePorts and external IPs without (local) endpoints.
//
// Equivalent to: KUBE-EXTERNAL-SERVICES
func (c Chains) ExternalServices() string { return c.prefix + "-EXTERNAL-SERVICES" }

// NodePorts is the nat chain reached from Services for packets to a local
// address other than loopback, with one rule per NodePort: a connection
// to 127.0.0.1:NODEPORT is refused at once, as kube-proxy's nftables mode
// does, rather than translated to an endpoint a loopback source cannot
// reach (kube-proxy's iptables mode serves it by turning on
// route_localnet, which exposes the node's loopback services to its
// neighbours).
//
// Equivalent to: KUBE-NODEPORTS
func (c Chains) NodePorts() string { return c.prefix + "-NODEPORTS" }

// MarkMasq is the nat chain that marks a packet for masquerade.
//
// Equivalent to: KUBE-MARK-MASQ
func (c Chains) MarkMasq() string { return c.prefix + "-MARK-MASQ" }

// Postrouting is the nat chain, reached from POSTROUTING, that
// masquerades marked packets.
//
// Equivalent to: KUBE-POSTROUTING
func (c Chains) Postrouting() string { return c.prefix + "-POSTROUTING" }

// Canary is the chain, in the nat and filter tables, whose disappearance
// tells the proxy that someone flushed the tables.
//
// Equivalent to: KUBE-PROXY-CANARY
func (c Chains) Canary() string { return c.prefix + "-PROXY-CANARY" }

// Forward is the filter chain reached from FORWARD: it drops packets
// conntrack finds invalid (unless the namespace's conntrack is TCP
// liberal), and accepts Service traffic and established connections
// ahead of a host's FORWARD policy of DROP.
//
// Equivalent to: KUBE-FORWARD
func (c Chains) Forward() string { return c.prefix + "-FORWARD" }

// portName is kube-proxy's name of a Service port as its chain hashes and
// rule comments use it: "namespace/name:port" (with the colon even for an
// unnamed port: "default/nginx:").
func portName(n Name, port string) string { return n.Namespace + "/" + n.Name + ":" + port }

func hash16(s string) string { return iptables.ChainHash(s, 16) }

// Service returns the chain that load-balances a Service port over all
// its endpoints.
//
// Equivalent to: KUBE-SVC-<hash of "ns/name:port" + protocol>
func (c Chains) Service(n Name, port string, p Protocol) string {
	return c.prefix + "-SVC-" + hash16(portName(n, port)+string(p.rule()))
}

// Local returns the chain that load-balances a Service port over the
// endpoints on this node (traffic policy Local).
//
// Equivalent to: KUBE-SVL-<hash>
func (c Chains) Local(n Name, port string, p Protocol) string {
	return c.prefix + "-SVL-" + hash16(portName(n, port)+string(p.rule()))
}

// External returns the chain for traffic to a Service port's NodePort and
// external IPs.
//
// Equivalent to: KUBE-EXT-<hash>
func (c Chains) External(n Name, port string, p Protocol) string {
	return c.prefix + "-EXT-" + hash16(portName(n, port)+string(p.rule()))
}

// Firewall returns the chain that lets only the sources of a Service
// port's loadBalancerSourceRanges on to its external chain.
//
// Equivalent to: KUBE-FW-<hash>
func (c Chains) Firewall(n Name, port string, p Protocol) string {
	return c.prefix + "-FW-" + hash16(portName(n, port)+string(p.rule()))
}

// Endpoint returns the chain that DNATs to one endpoint of a Service port.
//
// Equivalent to: KUBE-SEP-<hash of "ns/name:port" + protocol + "ip:port">
func (c Chains) Endpoint(n Name, port string, p Protocol, ep netip.AddrPort) string {
	return c.prefix + "-SEP-" + hash16(portName(n, port)+string(p.rule())+ep.String())
}

// Owns reports whether chain name belongs to the proxy: one of its fixed
// chains or a per-Service-port chain of its prefix. Other chains sharing
// the prefix (nat's PODNET-MASQ-…, PODNET-HOSTPORTS) are not its own.
func (c Chains) Owns(name string) bool {
	switch name {
	case c.Services(), c.ExternalServices(), c.NodePorts(), c.MarkMasq(), c.Postrouting(), c.Canary(), c.Forward():
		return true
	}
	rest, ok := strings.CutPrefix(name, c.prefix+"-")
	if !ok {
		return false
	}
	kind, hash, ok := strings.Cut(rest, "-")
	if !ok || len(hash) != 16 {
		return false
	}
	switch kind {
	case "SVC", "SVL", "EXT", "SEP", "FW":
	default:
		return false
	}
	for _, r := range hash {
		if !(r >= 'A' && r <= 'Z' || r >= '2' && r <= '7') {
			return false
		}
	}
	return true
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }
