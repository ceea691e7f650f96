package service

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// ModeNftables layout. Every rule is written at a full sync; afterwards a
// partial sync only adds and deletes elements of sets and data maps, which
// nf_tables commits without validating the table (only new rules and new
// jump/goto elements of verdict maps make it walk every chain). A Service
// port is a member of the set of its endpoint count; each such set has one
// rule, so a new connection meets one hash lookup per distinct endpoint
// count, whatever the number of Services:
//
//	ip-entries:  ip daddr . meta l4proto . th dport @ip-5 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 5 map @ip-backends
//
// A sync pays for validation only when it brings an endpoint count no
// Service had (one new set and rule). Node ports have the same with sets
// keyed by protocol and port, and "-pod" sets hold what pods and the node
// itself use for a Service with a Local external traffic policy.
//
// ClientIP affinity takes a slower path, kube-proxy's: the entry is an
// element of a verdict map (@ip-affinity) leading to a chain per Service
// port with a dynamic set per endpoint, so that a change to such a
// Service adds rules and is validated.
// Chain priorities of the nftables tables. The nat chains sit at dstnat
// and srcnat, where iptables-nft's nat table also is (the first chain to
// set up a NAT binding for a connection wins); the filter chains run
// just before the filter table's (priority 0), so a Service without
// endpoints is rejected even where the host's filter rules would drop it.
const (
	nftPriorityDNAT   = -100
	nftPrioritySNAT   = 100
	nftPriorityFilter = -10
)

// 32-bit registers (NFT_REG32_00 …).
const reg0 = 8

// ipsDstNAT is IPS_DST_NAT, the conntrack status bit of a DNATed connection.
const ipsDstNAT = 0x20

var nftSetIDs atomic.Uint32

// TableName returns the name of the proxy's nftables tables (one in the
// ip family, one in ip6) in ModeNftables: the prefix in lower case and
// "-proxy", so "podnet-proxy" by default and kube-proxy's own "kube-proxy"
// with KubeChainPrefix.
func (c Chains) TableName() string {
	b := []byte(c.prefix)
	for i, r := range b {
		if r >= 'A' && r <= 'Z' {
			b[i] = r + 'a' - 'A'
		}
	}
	return string(b) + "-proxy"
}

// nftKind is one kind of entry into the Services: by destination
// address and port, or by node port; "-pod" entries hold the endpoints
// that pods and the node itself use for a Service with a Local external
// traffic policy.
type nftKind struct {
	name     string
	nodePort bool
}

var nftKinds = []nftKind{{"ip", false}, {"ip-pod", false}, {"nodeport", true}, {"nodeport-pod", true}}

// nftShape is the set (and rule) of entries of one kind with n endpoints.
type nftShape struct {
	kind nftKind
	n    int
}

func (s nftShape) set() string { return s.kind.name + "-" + strconv.Itoa(s.n) }

// nftFamily is the proxy's table in one family and what it knows of it.
type nftFamily struct {
	f      podnet.Family
	table  *nftables.Table
	alen   uint32 // address bytes
	sets   map[string]*nftables.Set
	shapes map[nftShape]bool // the endpoint-count sets and rules, true once written
	use    map[nftShape]int  // elements of each written shape's set
	refs   map[string]int    // shared elements (hairpin, cluster-ips) by refKey, with the number of Services using them
}

// nftElem names one element: its family, set and key.
type nftElem struct {
	f   podnet.Family
	set string
	key string
}

// refKey names a shared element within its family.
func (e nftElem) refKey() string { return e.set + "/" + e.key }

// nftAffinity is the slower path of one Service port's endpoint list
// with ClientIP affinity: its chain, shape number and endpoints.
type nftAffinity struct {
	f       podnet.Family
	chain   string
	timeout uint32
	eps     []netip.AddrPort
}

// endpointName names the chain and dynamic set of one endpoint.
func (a *nftAffinity) endpointName(ap netip.AddrPort) string {
	return a.chain + "-" + hash16(ap.String())
}

func (a *nftAffinity) equal(b *nftAffinity) bool {
	return a.timeout == b.timeout && slices.Equal(a.eps, b.eps)
}

// nftRendering is everything one Service contributes to the tables.
type nftRendering struct {
	elems     map[nftElem]string // map and set elements; "" for a set's, the chain for a verdict map's
	shared    map[nftElem]bool   // refcounted elements (hairpin)
	affinity  []*nftAffinity
	endpoints int
}

// NftablesSupported reports whether the kernel of ns has what ModeNftables
// needs: it commits, in one transaction, a throwaway table with a nat
// chain, concatenated maps and a numgen DNAT rule, and deletes it again in
// the same transaction, so nothing remains.
func NftablesSupported(ns *netns.NS) error {
	c, err := nftables.New(nftables.WithNetNSFd(ns.DialFd()))
	if err != nil {
		return err
	}
	ff := newNftFamily(iptables.IPv4, "podnet-probe")
	t := c.AddTable(ff.table)
	ch := c.AddChain(&nftables.Chain{Name: "probe", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(nftPriorityDNAT)})
	shape := nftShape{nftKinds[0], 3}
	for _, s := range []*nftables.Set{ff.shapeSet(shape), ff.sets["ip-backends"]} {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: ff.shapeRule(shape)})
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables in netns %q: %w", ns, err)
	}
	return nil
}

func (ff *nftFamily) addrType() nftables.SetDatatype {
	if ff.alen == 16 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func (ff *nftFamily) defSet(name string, key nftables.SetDatatype, data *nftables.SetDatatype) *nftables.Set {
	s := &nftables.Set{Table: ff.table, Name: name, ID: nftSetIDs.Add(1), KeyType: key, Concatenation: strings.Contains(key.Name, " . ")}
	if data != nil {
		s.IsMap, s.DataType = true, *data
	}
	return s
}

func (ff *nftFamily) keyType(k nftKind) nftables.SetDatatype {
	if k.nodePort {
		return nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	}
	return nftables.MustConcatSetType(ff.addrType(), nftables.TypeInetProto, nftables.TypeInetService)
}

// shapeSet returns the set of shape s, defining it when new.
func (ff *nftFamily) shapeSet(s nftShape) *nftables.Set {
	name := s.set()
	if set := ff.sets[name]; set != nil {
		return set
	}
	set := ff.defSet(name, ff.keyType(s.kind), nil)
	ff.sets[name] = set
	return set
}

func newNftFamily(f podnet.Family, table string) *nftFamily {
	ff := &nftFamily{f: f, alen: nft.AddrLen(f), table: nft.Table(f, table),
		shapes: map[nftShape]bool{}, use: map[nftShape]int{}, refs: map[string]int{}, sets: map[string]*nftables.Set{}}
	addr := ff.addrType()
	ipKey, npKey := ff.keyType(nftKinds[0]), ff.keyType(nftKinds[2])
	backend := nftables.MustConcatSetType(addr, nftables.TypeInetService)
	def := func(name string, key nftables.SetDatatype, data *nftables.SetDatatype) {
		ff.sets[name] = ff.defSet(name, key, data)
	}
	verdict := nftables.TypeVerdict
	for _, k := range nftKinds {
		key := ff.keyType(k)
		def(k.name+"-affinity", key, &verdict)
		slot := nftables.MustConcatSetType(append(nftables.ConcatSetTypeElements(key), nftables.TypeMark)...)
		def(k.name+"-backends", slot, &backend)
	}
	def("hairpin", nftables.MustConcatSetType(addr, addr), nil)
	def("cluster-ips", addr, nil)
	def("nodeport-ips", addr, nil)
	allow := ff.defSet("firewall-allow", nftables.MustConcatSetType(append(nftables.ConcatSetTypeElements(ipKey), addr)...), nil)
	allow.Interval = true
	ff.sets["firewall-allow"] = allow
	for _, n := range []string{"cluster-masq", "external-masq", "external-masq-local", "no-endpoints", "no-local-endpoints", "external-reject", "external-drop", "firewall-ips"} {
		def(n, ipKey, nil)
	}
	for _, n := range []string{"nodeport-masq", "nodeport-masq-local", "nodeport-reject", "nodeport-drop"} {
		def(n, npKey, nil)
	}
	return ff
}

func (ff *nftFamily) addrRegs() uint32 { return ff.alen / 4 }

// keyRegs is the number of registers the key of kind k takes.
func (ff *nftFamily) keyRegs(k nftKind) uint32 {
	if k.nodePort {
		return 2
	}
	return ff.addrRegs() + 2
}

func (ff *nftFamily) saddr(reg uint32) expr.Any { return nft.SAddr(ff.f, reg) }

func (ff *nftFamily) daddr(reg uint32) expr.Any { return nft.DAddr(ff.f, reg) }

// key loads the lookup key of kind k from reg on: daddr . l4proto . dport,
// or l4proto . dport for node ports.
func (ff *nftFamily) key(k nftKind, reg uint32) []expr.Any {
	var out []expr.Any
	if !k.nodePort {
		out = append(out, ff.daddr(reg))
		reg += ff.addrRegs()
	}
	return append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
}

func (ff *nftFamily) lookup(set string, sreg uint32) *expr.Lookup {
	s := ff.sets[set]
	return &expr.Lookup{SourceRegister: sreg, SetName: s.Name, SetID: s.ID}
}

func (ff *nftFamily) mapTo(set string, sreg, dreg uint32) *expr.Lookup {
	l := ff.lookup(set, sreg)
	l.DestRegister, l.IsDestRegSet = dreg, true
	return l
}

// inSet matches when the key of kind k is in set.
func (ff *nftFamily) inSet(k nftKind, set string) []expr.Any {
	return append(ff.key(k, reg0), ff.lookup(set, reg0))
}

// fromCIDR matches a source inside (or, with not, outside) the prefix.
func (ff *nftFamily) fromCIDR(c netip.Prefix, not bool) []expr.Any {
	return nft.InPrefix(nft.SAddr, c, not)
}

// firewall is the rules of the firewall chain (new connections in the
// input, forward and output hooks), which meets packets the nat chains
// left untranslated: a Service port without (local) endpoints, then any
// other port of a cluster IP (rejected, so the client learns at once),
// then an unallocated address of the service CIDRs (dropped, as
// kube-proxy does, so it never leaves by the default route).
func (ff *nftFamily) firewall(serviceCIDRs []netip.Prefix) [][]expr.Any {
	ip := nftKinds[0]
	drop := []expr.Any{nft.Verdict(expr.VerdictDrop, "")}
	rules := [][]expr.Any{
		slices.Concat(ff.inSet(ip, "no-endpoints"), []expr.Any{ff.reject()}),
		slices.Concat(ff.inSet(ip, "no-local-endpoints"), drop),
		slices.Concat(ff.inSet(ip, "firewall-ips"), drop),
		{ff.daddr(reg0), ff.lookup("cluster-ips", reg0), ff.reject()},
	}
	for _, c := range serviceCIDRs {
		if podnet.FamilyOf(c.Addr()) == ff.f {
			rules = append(rules, append(nft.InPrefix(nft.DAddr, c, false), drop...))
		}
	}
	return rules
}

// firewallGate is the first rule of services: a new connection to a
// load-balancer IP and port with source ranges (@firewall-ips) from a
// source outside them is left untranslated, and the firewall chain
// drops it.
//
// Equivalent to: KEY @firewall-ips KEY . ip saddr != @firewall-allow return
func (ff *nftFamily) firewallGate() []expr.Any {
	ip := nftKinds[0]
	src := reg0 + ff.keyRegs(ip)
	gate := slices.Concat(ff.key(ip, reg0), []expr.Any{ff.lookup("firewall-ips", reg0), ff.saddr(src)})
	allowed := ff.lookup("firewall-allow", reg0)
	allowed.Invert = true
	return append(gate, allowed, nft.Verdict(expr.VerdictReturn, ""))
}

// nodePortDst matches the destinations that serve node ports: the
// addresses in @nodeport-ips when Config.NodePortAddresses names them,
// else every local address but loopback.
func (np *nftPlane) nodePortDst(ff *nftFamily) []expr.Any {
	if len(np.env.r.nodePortAddrs) > 0 {
		return []expr.Any{ff.daddr(reg0), ff.lookup("nodeport-ips", reg0)}
	}
	return slices.Concat(ff.notLoopback(), local(false))
}

// notLoopback matches a destination outside 127.0.0.0/8 (::1 in IPv6):
// node ports are not served on loopback, so a connection to
// 127.0.0.1:NODEPORT is refused at once instead of being translated to
// an endpoint its source address cannot reach.
func (ff *nftFamily) notLoopback() []expr.Any {
	return nft.InPrefix(nft.DAddr, loopback(ff.f), true)
}

// local matches a local source (saddr) or destination address.
func local(saddr bool) []expr.Any {
	return []expr.Any{&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagSADDR: saddr, FlagDADDR: !saddr},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nft.NE32(unix.RTN_LOCAL)}}
}

func setMark(bits uint32) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.NE32(^bits), Xor: nft.NE32(bits)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}}
}

func ctNew() []expr.Any {
	return []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.NE32(expr.CtStateBitNEW), Xor: nft.NE32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nft.NE32(0)}}
}

func (ff *nftFamily) reject() expr.Any {
	if ff.alen == 16 {
		return &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4} // ICMPv6 port unreachable
	}
	return &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3} // ICMP port unreachable
}

// dnat translates to the address in reg0 on and the port after it.
func (ff *nftFamily) dnat() expr.Any {
	fam := uint32(unix.NFPROTO_IPV4)
	if ff.alen == 16 {
		fam = unix.NFPROTO_IPV6
	}
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: reg0, RegProtoMin: reg0 + ff.addrRegs(), Specified: true}
}

// dnatTo translates to ap.
func (ff *nftFamily) dnatTo(ap netip.AddrPort) []expr.Any {
	return []expr.Any{&expr.Immediate{Register: reg0, Data: ap.Addr().AsSlice()},
		&expr.Immediate{Register: reg0 + ff.addrRegs(), Data: portBytes(ap.Port())[:2]}, ff.dnat()}
}

// shapeRule is the rule of shape s in its kind's entries chain.
//
// Equivalent to: KEY @KIND-N dnat to KEY . numgen random mod N map @KIND-backends
func (ff *nftFamily) shapeRule(s nftShape) []expr.Any {
	set := ff.shapeSet(s)
	return slices.Concat(ff.key(s.kind, reg0), []expr.Any{
		&expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID},
		&expr.Numgen{Register: reg0 + ff.keyRegs(s.kind), Modulus: uint32(s.n), Type: unix.NFT_NG_RANDOM},
		ff.mapTo(s.kind.name+"-backends", reg0, reg0), ff.dnat()})
}

// affinityRule is the first rule of kind k's entries chain.
//
// Equivalent to: KEY vmap @KIND-affinity
func (ff *nftFamily) affinityRule(k nftKind) []expr.Any {
	return append(ff.key(k, reg0), ff.mapTo(k.name+"-affinity", reg0, 0))
}

// shapeOf returns the shape whose set is named name, if it is one.
func shapeOf(name string) (nftShape, bool) {
	for _, k := range []nftKind{nftKinds[3], nftKinds[2], nftKinds[1], nftKinds[0]} { // longest names first
		if rest, ok := strings.CutPrefix(name, k.name+"-"); ok {
			if n, err := strconv.Atoi(rest); err == nil {
				return nftShape{k, n}, true
			}
			return nftShape{}, false
		}
	}
	return nftShape{}, false
}

// sortedShapes returns the shapes by kind, and by endpoint count from
// the largest: a full sync writes the rules of Services with many
// endpoints, which likely take the most new connections, first.
func sortedShapes(m map[nftShape]bool) []nftShape {
	out := slices.Collect(maps.Keys(m))
	slices.SortFunc(out, func(a, b nftShape) int {
		if c := strings.Compare(a.kind.name, b.kind.name); c != 0 {
			return c
		}
		return b.n - a.n
	})
	return out
}

func entriesChain(k nftKind) string { return k.name + "-entries" }

// baseChains are the table's fixed chains, with their rules.
type nftChain struct {
	c     *nftables.Chain
	rules [][]expr.Any
}

func (np *nftPlane) fixedChains(ff *nftFamily) []nftChain {
	t := ff.table
	hooked := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) *nftables.Chain {
		accept := nftables.ChainPolicyAccept
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio)), Policy: &accept}
	}
	plain := func(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: t} }
	mark := np.env.r.mark
	cidr, hasCIDR := np.env.r.cidr[ff.f]
	ip, ipPod, nodePort, nodePortPod := nftKinds[0], nftKinds[1], nftKinds[2], nftKinds[3]
	var services, nodeports [][]expr.Any
	services = append(services, ff.firewallGate())
	if hasCIDR {
		services = append(services, slices.Concat(ff.fromCIDR(cidr, true), ff.inSet(ip, "cluster-masq"), setMark(mark)))
	}
	services = append(services,
		slices.Concat(ff.inSet(ip, "external-masq"), setMark(mark)),
		slices.Concat(local(true), ff.inSet(ip, "external-masq-local"), setMark(mark)))
	nodeports = append(nodeports,
		slices.Concat(ff.inSet(nodePort, "nodeport-masq"), setMark(mark)),
		slices.Concat(local(true), ff.inSet(nodePort, "nodeport-masq-local"), setMark(mark)))
	jump := func(c string) []expr.Any { return []expr.Any{nft.Verdict(expr.VerdictJump, c)} }
	if hasCIDR {
		services = append(services, slices.Concat(ff.fromCIDR(cidr, false), jump(entriesChain(ipPod))))
		nodeports = append(nodeports, slices.Concat(ff.fromCIDR(cidr, false), jump(entriesChain(nodePortPod))))
	}
	services = append(services,
		slices.Concat(local(true), jump(entriesChain(ipPod))),
		jump(entriesChain(ip)),
		slices.Concat(np.nodePortDst(ff), jump("nodeports")))
	nodeports = append(nodeports,
		slices.Concat(local(true), jump(entriesChain(nodePortPod))),
		jump(entriesChain(nodePort)))
	a := ff.addrRegs()
	masquerading := [][]expr.Any{
		// Hairpin: an endpoint reaching itself through its Service.
		{&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.NE32(ipsDstNAT), Xor: nft.NE32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nft.NE32(0)},
			ff.saddr(reg0), ff.daddr(reg0 + a), ff.lookup("hairpin", reg0), &expr.Masq{FullyRandom: true}},
		{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.NE32(mark), Xor: nft.NE32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nft.NE32(0)}, nft.Verdict(expr.VerdictReturn, "")},
		{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.NE32(^uint32(0)), Xor: nft.NE32(mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			&expr.Masq{FullyRandom: true}},
	}
	drop := []expr.Any{nft.Verdict(expr.VerdictDrop, "")}
	firewall := ff.firewall(np.env.r.serviceCIDRs)
	external := [][]expr.Any{
		slices.Concat(ff.inSet(ip, "external-reject"), []expr.Any{ff.reject()}),
		slices.Concat(ff.inSet(ip, "external-drop"), drop),
		slices.Concat(np.nodePortDst(ff), ff.inSet(nodePort, "nodeport-reject"), []expr.Any{ff.reject()}),
		slices.Concat(np.nodePortDst(ff), ff.inSet(nodePort, "nodeport-drop"), drop),
	}
	newJump := func(c string) []expr.Any { return append(ctNew(), nft.Verdict(expr.VerdictJump, c)) }
	chains := []nftChain{
		{plain("services"), services},
		{plain("nodeports"), nodeports},
		{plain("masquerading"), masquerading},
		{plain("firewall"), firewall},
		{plain("external-firewall"), external},
		{hooked("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftPriorityDNAT), [][]expr.Any{jump("services")}},
		{hooked("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftPriorityDNAT), [][]expr.Any{jump("services")}},
		{hooked("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftPrioritySNAT), [][]expr.Any{jump("masquerading")}},
		{hooked("filter-input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftPriorityFilter), [][]expr.Any{newJump("firewall"), newJump("external-firewall")}},
		{hooked("filter-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftPriorityFilter), [][]expr.Any{newJump("firewall"), newJump("external-firewall")}},
		{hooked("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftPriorityFilter), [][]expr.Any{newJump("firewall")}},
	}
	// Each kind's entries: affinity first, then the shapes' rules (added
	// as shapes appear).
	for _, k := range nftKinds {
		chains = append(chains, nftChain{plain(entriesChain(k)), [][]expr.Any{ff.affinityRule(k)}})
	}
	return chains
}
