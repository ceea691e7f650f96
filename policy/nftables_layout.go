package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
)

// The table's layout. One inet table holds everything; its rules depend
// on the policies only, and pods, labels and namespaces are elements:
//
//	chain egress  { type filter hook forward priority 0
//	                ct state established,related accept
//	                ip saddr . ip daddr @hairpin-ip accept          (a pod reaching itself through a Service)
//	                meta nfproto ipv4 ip saddr vmap @egress-ip       (local pod -> goto its egress policy set)
//	                meta nfproto ipv6 ip6 saddr vmap @egress-ip6 }
//	chain ingress { type filter hook forward priority 1 — the same with daddr and @ingress-* }
//	chain set-eg-ip-H   { jump pol-eg-ip-P1; jump pol-eg-ip-P2; counter name "denied-egress" drop }
//	chain pol-eg-ip-P   { ip daddr @P-eg-r0-peers-ip meta l4proto . th dport @P-eg-r0-ports accept  (one rule per rule and port kind)
//	                      ip daddr . meta l4proto . th dport @P-eg-r1-named-ip accept }
//
// With admin and baseline policies (admin.go), a pod's set chain first
// jumps to the chain of its admin policies' rules in order (one per
// distinct ordered set of them: Allow accepts, Deny counts and drops,
// Pass and the end return), then to its NetworkPolicies' chains and
// drops as above, or, when none isolates it, to each baseline policy's
// chain (Allow accepts, Deny counts and drops) and ends:
//
//	chain set-in-ip-H  { jump adm-in-ip-A; jump banp-in-ip-B }
//	chain adm-in-ip-A  { ip saddr @A-in-r0-peers-ip accept; ip saddr @A-in-r1-peers-ip return; … }
//
// A pod isolated in a direction has its address in that direction's
// verdict map, leading to the chain of its set of policies (pods with
// the same policies share it); a policy's chain accepts what one of its
// rules allows, so the packet leaves the base chain accepted, and a
// packet no policy of the set accepts is counted and dropped. Egress and
// ingress are two base chains so that an accept in one still leaves the
// packet to the other: a connection between two local pods passes only
// when the source's egress and the destination's ingress allow it.
//
// Sets: the peers of a rule are an interval set of one family (pod
// addresses as single addresses, ipBlocks as ranges without their
// excepts); its numeric ports a concatenated interval set of protocol
// and port range; its named ports a set of address . protocol . port,
// resolved per pod (the destination pod's for ingress, the peer's for
// egress).

// DefaultTable is the name of the enforcer's nftables table (family inet).
const DefaultTable = "podnet-policy"

// Priorities of the base chains (in the forward hook): after the service
// proxy's filter chains (-10), egress before ingress.
const (
	priorityEgress  = 0
	priorityIngress = 1
)

// The named counters of the packets each direction's policies dropped.
const (
	counterIngress = "denied-ingress"
	counterEgress  = "denied-egress"
)

// 32-bit registers (NFT_REG32_00 …), for concatenated keys.
const reg0 = 8

var setIDs atomic.Uint32

// setKind is the shape of one of the table's sets.
type setKind uint8

const (
	kindAddrs setKind = iota // interval set of addresses: key first, value the address after last ("" to the top)
	kindPorts                // l4proto . port intervals: key proto . first, value proto . last
	kindNamed                // addr . l4proto . port
	kindVmap                 // addr : goto chain
	kindPair                 // addr . addr
)

func famName(f podnet.Family) string {
	if f == podnet.IPv6 {
		return "ip6"
	}
	return "ip"
}

func dirName(d Direction) string {
	if d == Ingress {
		return "in"
	}
	return "eg"
}

// hashOf names what would make too long a chain or set name: 64 bits of
// SHA-256, in hex.
func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// policyChain names the chain of policy n's rules in direction d, family f.
func policyChain(n Name, d Direction, f podnet.Family) string {
	return fmt.Sprintf("pol-%s-%s-%s", dirName(d), famName(f), hashOf(n.String()))
}

// tierChain names the chain of admin or baseline policy t's rules in
// direction d, family f.
func tierChain(t *tiered, d Direction, f podnet.Family) string {
	prefix := "banp"
	if t.tier == tierAdmin {
		prefix = "anp"
	}
	return fmt.Sprintf("%s-%s-%s-%s", prefix, dirName(d), famName(f), hashOf(t.id()))
}

// ruleSet names a set of rule i of the policy id names (a
// NetworkPolicy's "namespace/name", a tiered policy's id) in direction
// d: "peers-ip", "ports", "named-ip6" ….
func ruleSet(id string, d Direction, i int, what string) string {
	return fmt.Sprintf("%s-%s-r%d-%s", hashOf(id), dirName(d), i, what)
}

func vmapName(d Direction, f podnet.Family) string {
	if d == Ingress {
		return "ingress-" + famName(f)
	}
	return "egress-" + famName(f)
}

func counterName(d Direction) string {
	if d == Ingress {
		return counterIngress
	}
	return counterEgress
}

func addrLen(f podnet.Family) uint32 { return nft.AddrLen(f) }

func addrType(f podnet.Family) nftables.SetDatatype {
	if f == podnet.IPv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

// defSet returns the definition of a set of kind k and family f in t,
// with a fresh ID.
func defSet(t *nftables.Table, name string, k setKind, f podnet.Family) *nftables.Set {
	s := &nftables.Set{Table: t, Name: name, ID: setIDs.Add(1)}
	switch k {
	case kindAddrs:
		s.KeyType, s.Interval = addrType(f), true
	case kindPorts:
		s.KeyType = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
		s.Interval, s.Concatenation = true, true
	case kindNamed:
		s.KeyType = nftables.MustConcatSetType(addrType(f), nftables.TypeInetProto, nftables.TypeInetService)
		s.Concatenation = true
	case kindVmap:
		s.KeyType, s.IsMap, s.DataType = addrType(f), true, nftables.TypeVerdict
	case kindPair:
		s.KeyType = nftables.MustConcatSetType(addrType(f), addrType(f))
		s.Concatenation = true
	}
	return s
}

// elements returns the netlink elements of key with value v in a set of
// kind k: an interval of addresses is a start element and, unless it
// runs to the top, an end element after its last address.
func elements(k setKind, key, v string) []nftables.SetElement {
	switch k {
	case kindAddrs:
		es := []nftables.SetElement{{Key: []byte(key)}}
		if v != "" {
			es = append(es, nftables.SetElement{Key: []byte(v), IntervalEnd: true})
		}
		return es
	case kindPorts:
		return []nftables.SetElement{{Key: []byte(key), KeyEnd: []byte(v)}}
	case kindVmap:
		return []nftables.SetElement{{Key: []byte(key), VerdictData: nft.Verdict(expr.VerdictGoto, v)}}
	}
	return []nftables.SetElement{{Key: []byte(key)}}
}

func protoNum(p Protocol) byte {
	switch p.orTCP() {
	case UDP:
		return unix.IPPROTO_UDP
	case SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// protoPort is the key bytes of l4proto . th dport.
func protoPort(p Protocol, port uint16) string {
	return string([]byte{protoNum(p), 0, 0, 0, byte(port >> 8), byte(port), 0, 0})
}

// Expressions.

func nfproto(f podnet.Family) []expr.Any {
	v := byte(unix.NFPROTO_IPV4)
	if f == podnet.IPv6 {
		v = unix.NFPROTO_IPV6
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{v}}}
}

// addrLoad loads the source (or destination) address into reg.
func addrLoad(f podnet.Family, src bool, reg uint32) expr.Any {
	if src {
		return nft.SAddr(f, reg)
	}
	return nft.DAddr(f, reg)
}

func lookup(set string, reg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg, SetName: set}
}

// protoPortLoad loads l4proto . th dport from reg on.
func protoPortLoad(reg uint32) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
}

func ctEstablished() []expr.Any {
	return []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.NE32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: nft.NE32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nft.NE32(0)}}
}

// neighbourDiscovery matches ICMPv6 router and neighbour solicitations
// and advertisements and redirects (types 133-137).
func neighbourDiscovery() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: []byte{133}},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: []byte{137}}}
}

func accept() expr.Any { return nft.Verdict(expr.VerdictAccept, "") }

// countDrop counts the packet in the named counter and drops it.
func countDrop(counter string) []expr.Any {
	return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counter}, nft.Verdict(expr.VerdictDrop, "")}
}
