package service

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

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

// nftConn is the part of *nftables.Conn the proxy writes through: a
// batch of operations committed by Flush as one nf_tables transaction.
// Tests put a recorder in its place.
type nftConn interface {
	AddTable(*nftables.Table) *nftables.Table
	DelTable(*nftables.Table)
	AddSet(*nftables.Set, []nftables.SetElement) error
	DelSet(*nftables.Set)
	SetAddElements(*nftables.Set, []nftables.SetElement) error
	SetDeleteElements(*nftables.Set, []nftables.SetElement) error
	AddChain(*nftables.Chain) *nftables.Chain
	FlushChain(*nftables.Chain)
	DelChain(*nftables.Chain)
	AddRule(*nftables.Rule) *nftables.Rule
	GetRules(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error)
	GetSetElements(*nftables.Set) ([]nftables.SetElement, error)
	Flush() error
	CloseLasting() error
}

// nftPlane is ModeNftables.
type nftPlane struct {
	env  *env
	ns   *netns.NS
	dial func() (nftConn, error)
	// verifyDial opens the socket Verify reads over, apart from the one
	// syncs write through.
	verifyDial func() (nftConn, error)
	conn       nftConn
	fams       map[podnet.Family]*nftFamily
	written    map[Name]*nftRendering
	// owners says which Service holds each entry (an address, protocol
	// and port, or a node port, of one family); losers are the Services
	// that wanted one another held, to be synced again when it is let go.
	owners map[string]Name
	losers map[string]map[Name]bool
}

func newNftPlane(e *env, ns *netns.NS, dial func() (nftConn, error)) *nftPlane {
	verifyDial := dial
	if dial == nil {
		dial = func() (nftConn, error) { return nft.Open(ns) }
		verifyDial = func() (nftConn, error) { return nft.Open(ns) }
	}
	return &nftPlane{env: e, ns: ns, dial: dial, verifyDial: verifyDial, written: map[Name]*nftRendering{}}
}

// NftablesSupported reports whether the kernel of ns has what ModeNftables
// needs: it commits, in one transaction, a throwaway table with a nat
// chain, concatenated maps and a numgen DNAT rule, and deletes it again in
// the same transaction, so nothing remains.
func NftablesSupported(ns *netns.NS) error {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
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
	for _, n := range []string{"cluster-masq", "external-masq", "external-masq-local", "no-endpoints", "no-local-endpoints", "external-reject", "external-drop"} {
		def(n, ipKey, nil)
	}
	for _, n := range []string{"nodeport-masq", "nodeport-masq-local", "nodeport-reject", "nodeport-drop"} {
		def(n, npKey, nil)
	}
	return ff
}

// --- expressions -----------------------------------------------------------

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
		{ff.daddr(reg0), ff.lookup("cluster-ips", reg0), ff.reject()},
	}
	for _, c := range serviceCIDRs {
		if podnet.FamilyOf(c.Addr()) == ff.f {
			rules = append(rules, append(nft.InPrefix(nft.DAddr, c, false), drop...))
		}
	}
	return rules
}

// notLoopback matches a destination outside 127.0.0.0/8 (::1 in IPv6):
// node ports are not served on loopback, so a connection to
// 127.0.0.1:NODEPORT is refused at once instead of being translated to
// an endpoint its source address cannot reach.
func (ff *nftFamily) notLoopback() []expr.Any {
	return nft.InPrefix(nft.DAddr, loopback(ff.f), true)
}

// loopback is the loopback network of family f.
func loopback(f podnet.Family) netip.Prefix {
	if f == podnet.IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
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
		slices.Concat(ff.notLoopback(), local(false), jump("nodeports")))
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
		slices.Concat(ff.notLoopback(), local(false), ff.inSet(nodePort, "nodeport-reject"), []expr.Any{ff.reject()}),
		slices.Concat(ff.notLoopback(), local(false), ff.inSet(nodePort, "nodeport-drop"), drop),
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

// --- rendering -------------------------------------------------------------

func protoNum(p Protocol) byte {
	switch p {
	case UDP:
		return unix.IPPROTO_UDP
	case SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func portBytes(port uint16) []byte { return []byte{byte(port >> 8), byte(port), 0, 0} }

func ipKey(a netip.Addr, p Protocol, port uint16) string {
	return string(slices.Concat(a.AsSlice(), []byte{protoNum(p), 0, 0, 0}, portBytes(port)))
}

func npKey(p Protocol, port uint16) string {
	return string(slices.Concat([]byte{protoNum(p), 0, 0, 0}, portBytes(port)))
}

func backendVal(ap netip.AddrPort) string {
	return string(slices.Concat(ap.Addr().AsSlice(), portBytes(ap.Port())))
}

func (r *nftRendering) add(f podnet.Family, set, key, val string) {
	r.elems[nftElem{f, set, key}] = val
}

// entryOf names the entry an element belongs to: every element but the
// hairpin set's is keyed by its entry's key (the backends' by the key and
// a slot).
func entryOf(e nftElem) string {
	key := e.key
	if strings.HasSuffix(e.set, "-backends") {
		key = key[:len(key)-4]
	}
	tag := "ip/"
	if strings.HasPrefix(e.set, "nodeport") {
		tag = "np/"
	}
	return e.f.String() + "/" + tag + key
}

// claim gives n the entries of r no other Service holds, and drops from r
// the elements of those another holds (two Services with one external
// IP and port, say): the first keeps it, as the first iptables rule
// would, and the sync does not fail on a duplicate element.
func (np *nftPlane) claim(n Name, r *nftRendering) {
	for e := range r.elems {
		id := entryOf(e)
		if o, held := np.owners[id]; held && o != n {
			delete(r.elems, e)
			if np.losers[id] == nil {
				np.losers[id] = map[Name]bool{}
				np.env.log.Warn("service port entry already held by another Service; skipped", "service", n.String(), "holder", o.String())
			}
			np.losers[id][n] = true
			continue
		}
		np.owners[id] = n
	}
}

// release lets go of the entries of n's old rendering, and returns them.
func (np *nftPlane) release(n Name, r *nftRendering) []string {
	var ids []string
	for e := range r.elems {
		if id := entryOf(e); np.owners[id] == n {
			delete(np.owners, id)
			ids = append(ids, id)
		}
	}
	return ids
}

// nftTarget is an endpoint list that entries lead to.
type nftTarget struct {
	eps []epChoice
	aff *nftAffinity // ClientIP affinity: the chain with the endpoints
}

// target returns the endpoints of a list, or nil when it is empty. A list
// with ClientIP affinity gets its own chain.
func (np *nftPlane) target(out *nftRendering, ff *nftFamily, sp *servicePort, local bool, eps []epChoice) *nftTarget {
	if len(eps) == 0 {
		return nil
	}
	t := &nftTarget{eps: eps}
	if sp.aff > 0 {
		l := "cluster"
		if local {
			l = "local"
		}
		t.aff = &nftAffinity{f: ff.f, chain: "affinity-" + hash16(sp.spn+string(sp.np)+l), timeout: sp.aff}
		for _, c := range eps {
			t.aff.eps = append(t.aff.eps, c.ap)
		}
		out.affinity = append(out.affinity, t.aff)
	}
	return t
}

// entry leads the key of kind k to t: a member of the set of its endpoint
// count with its endpoints in the kind's backends, or an element of the
// affinity map.
func (np *nftPlane) entry(out *nftRendering, ff *nftFamily, k nftKind, key string, t *nftTarget) {
	if t.aff != nil {
		out.add(ff.f, k.name+"-affinity", key, t.aff.chain)
		return
	}
	shape := nftShape{k, len(t.eps)}
	if _, ok := ff.shapes[shape]; !ok {
		ff.shapes[shape] = false
	}
	out.add(ff.f, ff.shapeSet(shape).Name, key, "")
	for i, c := range t.eps {
		out.add(ff.f, k.name+"-backends", key+string(nft.NE32(uint32(i))), backendVal(c.ap))
	}
}

// render returns the elements of s in every family the proxy serves,
// allocating shapes as needed.
func (np *nftPlane) render(s *Service) *nftRendering {
	out := &nftRendering{elems: map[nftElem]string{}, shared: map[nftElem]bool{}}
	aff := s.affinitySeconds()
	for _, f := range np.env.r.families {
		fs := np.env.r.family(s, f, aff)
		if fs == nil {
			continue
		}
		for _, p := range s.Ports {
			np.renderPort(out, np.fams[f], fs.port(p))
		}
	}
	return out
}

func (np *nftPlane) renderPort(out *nftRendering, ff *nftFamily, sp *servicePort) {
	f := ff.f
	svc := np.target(out, ff, sp, false, sp.svcEps)
	var svl *nftTarget
	if sp.intLocal || sp.extLocal {
		svl = np.target(out, ff, sp, true, sp.svlEps)
	}
	seen := map[netip.Addr]bool{}
	for _, c := range slices.Concat(sp.svcEps, sp.svlEps) {
		if a := c.ap.Addr(); !seen[a] {
			seen[a] = true
			out.shared[nftElem{f, "hairpin", string(slices.Concat(a.AsSlice(), a.AsSlice()))}] = true
		}
	}
	out.endpoints += len(seen)
	if sp.cip.IsValid() {
		out.shared[nftElem{f, "cluster-ips", string(sp.cip.AsSlice())}] = true
		k := ipKey(sp.cip, sp.proto, sp.p.Port)
		t := svc
		if sp.intLocal {
			t = svl
		}
		switch {
		case t == nil && svc != nil: // internal policy Local, endpoints elsewhere only
			out.add(f, "no-local-endpoints", k, "")
		case t == nil:
			out.add(f, "no-endpoints", k, "")
		default:
			np.entry(out, ff, nftKinds[0], k, t)
			if !sp.intLocal && sp.hasCIDR {
				out.add(f, "cluster-masq", k, "")
			}
		}
	}
	ext := svc
	if sp.extLocal {
		ext = svl
	}
	// Under a Local external policy, pods and the node itself reach
	// every endpoint (the node masqueraded); traffic from elsewhere only
	// this node's, and is dropped when it has none.
	entry := func(prefix string, m, pod nftKind, k string) {
		switch {
		case svc == nil:
			out.add(f, prefix+"-reject", k, "")
		case sp.extLocal:
			np.entry(out, ff, pod, k, svc)
			out.add(f, prefix+"-masq-local", k, "")
			if ext == nil {
				out.add(f, prefix+"-drop", k, "")
			} else {
				np.entry(out, ff, m, k, ext)
			}
		default:
			np.entry(out, ff, m, k, ext)
			out.add(f, prefix+"-masq", k, "")
		}
	}
	for _, eip := range sp.eips {
		entry("external", nftKinds[0], nftKinds[1], ipKey(eip, sp.proto, sp.p.Port))
	}
	if sp.servesNodePort() {
		entry("nodeport", nftKinds[2], nftKinds[3], npKey(sp.proto, sp.p.NodePort))
	}
}

// --- syncing ---------------------------------------------------------------

// connect returns the netlink socket in the proxy's namespace, opening it
// with buffers large enough for a full sync's batch.
func (np *nftPlane) connect() (nftConn, error) {
	if np.conn != nil {
		return np.conn, nil
	}
	c, err := np.dial()
	if err != nil {
		return nil, err
	}
	np.conn = c
	return c, nil
}

// flush commits the queued batch; after an error the socket is replaced.
func (np *nftPlane) flush(c nftConn) error {
	if err := c.Flush(); err != nil {
		c.CloseLasting()
		np.conn = nil
		return err
	}
	return nil
}

// tables returns the proxy's table in each family it programs.
func (np *nftPlane) tables() []*nftables.Table {
	var ts []*nftables.Table
	for _, f := range np.env.r.families {
		ts = append(ts, nft.Table(f, np.env.r.chains.TableName()))
	}
	return ts
}

// intact reads the one rule of each family's nat-prerouting chain: gone
// when someone deleted or flushed the table (nft flush ruleset, nft
// delete table, nft flush table).
func (np *nftPlane) intact() (bool, error) {
	c, err := np.connect()
	if err != nil {
		return false, err
	}
	for _, t := range np.tables() {
		rules, err := c.GetRules(t, &nftables.Chain{Name: "nat-prerouting", Table: t})
		if err != nil || len(rules) != 1 {
			return false, nil
		}
	}
	return true, nil
}

// verifier returns a check that reads every set and map of the proxy's
// tables, and the rules of their fixed chains, and reports whether they
// hold what the proxy had written when verifier was called: a set
// flushed, an element deleted or changed, a rule removed or added by hand
// all read as a difference. The dynamic affinity sets, which the kernel
// fills, are not compared. Elements are compared as the bytes sent. The
// check reads over a socket of its own, so it may run while a sync
// writes; its answer is then stale and the caller drops it.
//
// Equivalent to: nft list table ip NAME, compared with the proxy's record
func (np *nftPlane) verifier() func() (bool, error) {
	if np.fams == nil {
		return func() (bool, error) { return false, nil } // nothing written yet
	}
	type chainWant struct {
		c     *nftables.Chain
		rules int
	}
	want := np.expected()
	sets := map[podnet.Family][]*nftables.Set{}
	chains := map[podnet.Family][]chainWant{}
	for f, ff := range np.fams {
		sets[f] = slices.Collect(maps.Values(ff.sets))
		shapes := map[string]int{}
		for sh := range ff.shapes {
			shapes[entriesChain(sh.kind)]++
		}
		for _, ch := range np.fixedChains(ff) {
			chains[f] = append(chains[f], chainWant{ch.c, len(ch.rules) + shapes[ch.c.Name]})
		}
	}
	log, dial := np.env.log, np.verifyDial
	return func() (bool, error) {
		c, err := dial()
		if err != nil {
			return false, err
		}
		defer c.CloseLasting()
		for f := range sets {
			for _, s := range sets[f] {
				es, err := c.GetSetElements(s)
				if err != nil || !sameElements(s, es, want[f][s.Name]) {
					log.Warn("nftables set differs from what was written", "family", f, "set", s.Name, "elements", len(es), "want", len(want[f][s.Name]))
					return false, nil
				}
			}
			for _, ch := range chains[f] {
				if rules, err := c.GetRules(ch.c.Table, ch.c); err != nil || len(rules) != ch.rules {
					log.Warn("nftables chain differs from what was written", "family", f, "chain", ch.c.Name)
					return false, nil
				}
			}
		}
		return true, nil
	}
}

// sameElements reports whether es, read from set s, are exactly want:
// key to value as the proxy sent them (a verdict map's value is the
// chain it leads to).
func sameElements(s *nftables.Set, es []nftables.SetElement, want map[string]string) bool {
	if len(es) != len(want) {
		return false
	}
	verdicts := s.IsMap && s.DataType.Name == nftables.TypeVerdict.Name
	for _, e := range es {
		v, ok := want[string(e.Key)]
		if !ok {
			return false
		}
		got := string(e.Val)
		switch {
		case !s.IsMap:
			got = ""
		case e.VerdictData != nil:
			got = e.VerdictData.Chain
		case verdicts:
			_, got, _ = strings.Cut(decodeVerdict(e.Val), " ")
		}
		if got != v {
			return false
		}
	}
	return true
}

// expected returns the elements every set should hold, key to value as
// sent (a verdict map's: its chain), per family and set: the Services'
// own and the shared ones.
func (np *nftPlane) expected() map[podnet.Family]map[string]map[string]string {
	out := map[podnet.Family]map[string]map[string]string{}
	put := func(f podnet.Family, set, key, val string) {
		if out[f] == nil {
			out[f] = map[string]map[string]string{}
		}
		if out[f][set] == nil {
			out[f][set] = map[string]string{}
		}
		out[f][set][key] = val
	}
	for _, r := range np.written {
		for e, v := range r.elems {
			put(e.f, e.set, e.key, v)
		}
	}
	for f, ff := range np.fams {
		for rk := range ff.refs {
			set, key, _ := strings.Cut(rk, "/")
			put(f, set, key, "")
		}
	}
	return out
}

// elemBatch collects element additions and deletions per set.
type elemBatch struct {
	add, del map[*nftables.Set][]nftables.SetElement
}

// queue adds the element key (with val) of s to the list m holds for s.
func (b *elemBatch) queue(m map[*nftables.Set][]nftables.SetElement, s *nftables.Set, key, val string) {
	m[s] = append(m[s], elem(s, key, val))
}

func newElemBatch() *elemBatch {
	return &elemBatch{add: map[*nftables.Set][]nftables.SetElement{}, del: map[*nftables.Set][]nftables.SetElement{}}
}

func elem(s *nftables.Set, key, val string) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(key)}
	switch {
	case s.DataType.Name == nftables.TypeVerdict.Name:
		e.VerdictData = nft.Verdict(expr.VerdictGoto, val)
	case s.IsMap:
		e.Val = []byte(val)
	}
	return e
}

// queueAll queues every element list of m with op, in messages that fit.
func queueAll(m map[*nftables.Set][]nftables.SetElement, op func(*nftables.Set, []nftables.SetElement) error) error {
	for s, es := range m {
		if err := nft.Chunked(s, es, op); err != nil {
			return err
		}
	}
	return nil
}

// writeAffinity queues the chain of a, replacing old's (nil when new):
// endpoints that stay keep their chain and dynamic set, so their clients
// keep their affinity.
//
// Equivalent to:
//
//	chain affinity-H { ip saddr @affinity-H-E update @affinity-H-E { ip saddr } dnat to E … (each endpoint)
//	                   numgen random mod N vmap { 0 : goto affinity-H-E, … } }
//	chain affinity-H-E { update @affinity-H-E { ip saddr } dnat to E }
//	set affinity-H-E { type ipv4_addr; flags dynamic,timeout; timeout T }
func (np *nftPlane) writeAffinity(c nftConn, ff *nftFamily, a, old *nftAffinity) error {
	t := ff.table
	group := &nftables.Chain{Name: a.chain, Table: t}
	kept := map[netip.AddrPort]bool{}
	if old != nil {
		c.FlushChain(group)
		for _, ap := range old.eps {
			if old.timeout == a.timeout && slices.Contains(a.eps, ap) {
				kept[ap] = true
				continue
			}
			np.dropAffinityEndpoint(c, ff, old, ap)
		}
	} else {
		c.AddChain(group)
	}
	epSet := func(ap netip.AddrPort) *nftables.Set {
		return &nftables.Set{Table: t, Name: a.endpointName(ap), ID: nftSetIDs.Add(1), KeyType: ff.addrType(), HasTimeout: true, Dynamic: true, Timeout: time.Duration(a.timeout) * time.Second}
	}
	update := func(s *nftables.Set) expr.Any {
		return &expr.Dynset{SrcRegKey: reg0, SetName: s.Name, Operation: unix.NFT_DYNSET_OP_UPDATE}
	}
	pick := &nftables.Set{Table: t, Name: "__map%d", ID: nftSetIDs.Add(1), Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	var picks []nftables.SetElement
	var rules [][]expr.Any
	for i, ap := range a.eps {
		s := epSet(ap)
		if !kept[ap] {
			if err := c.AddSet(s, nil); err != nil {
				return err
			}
			ch := c.AddChain(&nftables.Chain{Name: s.Name, Table: t})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat([]expr.Any{ff.saddr(reg0), update(s)}, ff.dnatTo(ap))})
		}
		rules = append(rules, slices.Concat([]expr.Any{ff.saddr(reg0), &expr.Lookup{SourceRegister: reg0, SetName: s.Name}, update(s)}, ff.dnatTo(ap)))
		picks = append(picks, nftables.SetElement{Key: nft.NE32(uint32(i)), VerdictData: nft.Verdict(expr.VerdictGoto, s.Name)})
	}
	if err := c.AddSet(pick, picks); err != nil {
		return err
	}
	rules = append(rules, []expr.Any{&expr.Numgen{Register: reg0, Modulus: uint32(len(a.eps)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg0, SetName: pick.Name, SetID: pick.ID, IsDestRegSet: true, DestRegister: 0}})
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: group, Exprs: r})
	}
	return nil
}

func (np *nftPlane) dropAffinityEndpoint(c nftConn, ff *nftFamily, a *nftAffinity, ap netip.AddrPort) {
	ch := &nftables.Chain{Name: a.endpointName(ap), Table: ff.table}
	c.FlushChain(ch)
	c.DelChain(ch)
	c.DelSet(&nftables.Set{Table: ff.table, Name: a.endpointName(ap)})
}

// dropAffinity queues the deletion of a's chains and sets; the shape
// elements that lead to it must be deleted before.
func (np *nftPlane) dropAffinity(c nftConn, ff *nftFamily, a *nftAffinity) {
	group := &nftables.Chain{Name: a.chain, Table: ff.table}
	c.FlushChain(group)
	for _, ap := range a.eps {
		np.dropAffinityEndpoint(c, ff, a, ap)
	}
	c.DelChain(group)
}

// full replaces each family's table in one transaction: the table is
// deleted and written anew with every set, element, chain and rule.
// Connections keep their NAT bindings in conntrack, so none breaks;
// ClientIP affinity starts afresh.
//
// Equivalent to: nft -f with "add table ip NAME; delete table ip NAME; table ip NAME { … }"
func (np *nftPlane) full(ctx context.Context, want map[Name]*Service) (rules int, err error) {
	c, err := np.connect()
	if err != nil {
		return 0, err
	}
	defer np.dropOnError(&err)
	np.fams = map[podnet.Family]*nftFamily{}
	for _, f := range np.env.r.families {
		np.fams[f] = newNftFamily(f, np.env.r.chains.TableName())
	}
	np.owners, np.losers = map[string]Name{}, map[string]map[Name]bool{}
	renders, b := np.renderAll(want)
	for _, f := range np.env.r.families {
		n, err := np.writeTable(c, np.fams[f])
		if err != nil {
			return 0, err
		}
		rules += n
	}
	for _, n := range sortedNames(renders) {
		for _, a := range renders[n].affinity {
			if err := np.writeAffinity(c, np.fams[a.f], a, nil); err != nil {
				return 0, err
			}
		}
	}
	if err := queueAll(b.add, c.SetAddElements); err != nil {
		return 0, err
	}
	if err := np.flush(c); err != nil {
		return 0, err
	}
	for _, ff := range np.fams {
		ff.markWritten()
	}
	for _, r := range renders {
		for e := range r.elems {
			if sh, ok := shapeOf(e.set); ok {
				np.fams[e.f].use[sh]++
			}
		}
	}
	np.written = renders
	return rules, nil
}

// dropOnError forgets the socket when *err is set: the batch queued on it
// so far must not reach the kernel with the next sync's.
func (np *nftPlane) dropOnError(err *error) {
	if *err != nil && np.conn != nil {
		np.conn.CloseLasting()
		np.conn = nil
	}
}

// renderAll renders every Service of want, gives each the entries it may
// hold, and collects their elements (the shared ones once).
func (np *nftPlane) renderAll(want map[Name]*Service) (map[Name]*nftRendering, *elemBatch) {
	renders := make(map[Name]*nftRendering, len(want))
	b := newElemBatch()
	for _, n := range sortedNames(want) {
		r := np.render(want[n])
		np.claim(n, r)
		renders[n] = r
		for e, v := range r.elems {
			b.queue(b.add, np.fams[e.f].sets[e.set], e.key, v)
		}
		for e := range r.shared {
			ff := np.fams[e.f]
			if ff.refs[e.refKey()]++; ff.refs[e.refKey()] == 1 {
				b.queue(b.add, ff.sets[e.set], e.key, "")
			}
		}
	}
	return renders, b
}

// writeTable queues the replacement of ff's table: its sets, its fixed
// chains and rules, and the rule of every shape. It returns the rules.
func (np *nftPlane) writeTable(c nftConn, ff *nftFamily) (int, error) {
	c.AddTable(ff.table)
	c.DelTable(ff.table)
	c.AddTable(ff.table)
	for _, name := range slices.Sorted(maps.Keys(ff.sets)) {
		if err := c.AddSet(ff.sets[name], nil); err != nil {
			return 0, err
		}
	}
	rules := 0
	chains := np.fixedChains(ff)
	for _, ch := range chains {
		c.AddChain(ch.c)
	}
	for _, ch := range chains {
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: ff.table, Chain: ch.c, Exprs: r})
			rules++
		}
	}
	for _, sh := range sortedShapes(ff.shapes) {
		c.AddRule(&nftables.Rule{Table: ff.table, Chain: &nftables.Chain{Name: entriesChain(sh.kind), Table: ff.table}, Exprs: ff.shapeRule(sh)})
		rules++
	}
	return rules, nil
}

// markWritten records that every shape of ff is in the kernel.
func (ff *nftFamily) markWritten() {
	for sh := range ff.shapes {
		ff.shapes[sh] = true
	}
}

// affChange is a ClientIP affinity chain that changes in a partial sync:
// a is nil when it goes, old when it is new.
type affChange struct{ a, old *nftAffinity }

// nftDiff is what a partial sync writes: element changes, the change in
// each shared element's users, and the affinity chains that change.
type nftDiff struct {
	b        *elemBatch
	refDelta map[nftElem]int
	affs     []affChange
	elems    int
	// use is the change in the elements of each shape's set; gone the
	// written shapes it leaves empty, whose sets and rules go too.
	use  map[podnet.Family]map[nftShape]int
	gone map[podnet.Family]map[nftShape]bool
}

// countShape records one element more (or, with delta -1, less) in the
// set named set, when that is a shape's.
func (d *nftDiff) countShape(f podnet.Family, set string, delta int) {
	if sh, ok := shapeOf(set); ok {
		if d.use[f] == nil {
			d.use[f] = map[nftShape]int{}
		}
		d.use[f][sh] += delta
	}
}

// partial writes the changed Services as element changes: deletions of
// what they no longer have, additions of what is new. A shape seen for
// the first time adds its set and rule, and so does a Service port with
// ClientIP affinity. Nothing is read back.
//
// Equivalent to: nft -f with "delete element …; add element …"
func (np *nftPlane) partial(ctx context.Context, changed map[Name]*Service) (n int, err error) {
	if len(changed) == 0 {
		return 0, nil
	}
	c, err := np.connect()
	if err != nil {
		return 0, err
	}
	defer np.dropOnError(&err)
	// Entries the changed Services let go of are free for the others
	// among them, and for the Services that wanted them before: those
	// join this sync, so an entry passes from one to the other in one
	// transaction.
	// A Service that comes before a holder by name takes the entry from
	// it, as a full sync would give it: the holder joins too.
	renders := np.addDisplaced(changed)
	var released []string
	for _, n := range sortedNames(changed) {
		if or := np.written[n]; or != nil {
			released = append(released, np.release(n, or)...)
		}
	}
	np.addLosers(released, changed)
	d := &nftDiff{b: newElemBatch(), refDelta: map[nftElem]int{},
		use: map[podnet.Family]map[nftShape]int{}, gone: map[podnet.Family]map[nftShape]bool{}}
	for _, n := range sortedNames(changed) {
		nr, ok := renders[n]
		if s := changed[n]; s != nil && !ok {
			nr = np.render(s)
		}
		if nr != nil {
			np.claim(n, nr)
		}
		renders[n] = nr
		d.service(np.written[n], nr, np.fams)
	}
	refs := np.sharedChanges(d)
	np.emptiedShapes(d)
	added, err := np.writeDiff(c, d)
	if err != nil {
		return 0, err
	}
	np.commit(d, renders, refs, added)
	return d.elems, nil
}

// service adds the changes of one Service from or to nr (either may be
// nil) to d.
func (d *nftDiff) service(or, nr *nftRendering, fams map[podnet.Family]*nftFamily) {
	var oldElems, newElems map[nftElem]string
	oldAff := map[string]*nftAffinity{}
	if or != nil {
		oldElems = or.elems
		for e := range or.shared {
			d.refDelta[e]--
		}
		for _, a := range or.affinity {
			oldAff[a.f.String()+a.chain] = a
		}
	}
	if nr != nil {
		newElems = nr.elems
		for e := range nr.shared {
			d.refDelta[e]++
		}
		for _, a := range nr.affinity {
			old := oldAff[a.f.String()+a.chain]
			delete(oldAff, a.f.String()+a.chain)
			if old == nil || !old.equal(a) {
				d.affs = append(d.affs, affChange{a, old})
			}
		}
	}
	for _, a := range oldAff {
		d.affs = append(d.affs, affChange{nil, a})
	}
	for e, v := range oldElems {
		if nv, ok := newElems[e]; !ok || nv != v {
			d.b.queue(d.b.del, fams[e.f].sets[e.set], e.key, v)
			d.countShape(e.f, e.set, -1)
		}
	}
	for e, v := range newElems {
		if ov, ok := oldElems[e]; !ok || ov != v {
			d.b.queue(d.b.add, fams[e.f].sets[e.set], e.key, v)
			d.countShape(e.f, e.set, 1)
			d.elems++
		}
	}
}

// sharedChanges queues the shared elements whose first user came or whose
// last user went, and returns every changed element's new user count.
func (np *nftPlane) sharedChanges(d *nftDiff) map[nftElem]int {
	refs := map[nftElem]int{}
	for e, delta := range d.refDelta {
		ff := np.fams[e.f]
		before := ff.refs[e.refKey()]
		after := before + delta
		refs[e] = after
		switch {
		case before == 0 && after > 0:
			d.b.queue(d.b.add, ff.sets[e.set], e.key, "")
		case before > 0 && after == 0:
			d.b.queue(d.b.del, ff.sets[e.set], e.key, "")
		}
	}
	return refs
}

// writeDiff queues d and commits it; it returns the families that gained
// shapes. Deletions come first, so that a chain is no longer referenced
// when it goes and a changed map element can be added again.
func (np *nftPlane) writeDiff(c nftConn, d *nftDiff) ([]*nftFamily, error) {
	if err := queueAll(d.b.del, c.SetDeleteElements); err != nil {
		return nil, err
	}
	for _, ch := range d.affs {
		if ch.a == nil {
			np.dropAffinity(c, np.fams[ch.old.f], ch.old)
		}
	}
	var added []*nftFamily
	for _, ff := range np.fams {
		grew, err := np.writeShapes(c, ff, d.gone[ff.f])
		if err != nil {
			return nil, err
		}
		if grew {
			added = append(added, ff)
		}
	}
	for _, ch := range d.affs {
		if ch.a != nil {
			if err := np.writeAffinity(c, np.fams[ch.a.f], ch.a, ch.old); err != nil {
				return nil, err
			}
		}
	}
	if err := queueAll(d.b.add, c.SetAddElements); err != nil {
		return nil, err
	}
	return added, np.flush(c)
}

// emptiedShapes records in d.gone the written shapes whose sets the
// change leaves without elements.
func (np *nftPlane) emptiedShapes(d *nftDiff) {
	for f, use := range d.use {
		ff := np.fams[f]
		for sh, delta := range use {
			if ff.shapes[sh] && ff.use[sh]+delta == 0 {
				if d.gone[f] == nil {
					d.gone[f] = map[nftShape]bool{}
				}
				d.gone[f][sh] = true
			}
		}
	}
}

// writeShapes queues the sets and rules of ff's new shapes and the
// removal of the gone ones, and reports whether there were new ones. A
// rule has no handle the proxy knows, so a kind that loses a shape has
// its entries chain flushed and written again in the same transaction:
// one validation of the table, as adding a shape costs.
func (np *nftPlane) writeShapes(c nftConn, ff *nftFamily, gone map[nftShape]bool) (bool, error) {
	grew := false
	rewrite := map[string]bool{}
	for sh := range gone {
		rewrite[sh.kind.name] = true
	}
	for _, sh := range sortedShapes(ff.shapes) {
		if ff.shapes[sh] || gone[sh] {
			continue
		}
		grew = true
		if err := c.AddSet(ff.shapeSet(sh), nil); err != nil {
			return false, err
		}
		if !rewrite[sh.kind.name] {
			c.AddRule(&nftables.Rule{Table: ff.table, Chain: &nftables.Chain{Name: entriesChain(sh.kind), Table: ff.table}, Exprs: ff.shapeRule(sh)})
		}
	}
	for _, k := range nftKinds {
		if !rewrite[k.name] {
			continue
		}
		ch := &nftables.Chain{Name: entriesChain(k), Table: ff.table}
		c.FlushChain(ch)
		c.AddRule(&nftables.Rule{Table: ff.table, Chain: ch, Exprs: ff.affinityRule(k)})
		for _, sh := range sortedShapes(ff.shapes) {
			if sh.kind == k && !gone[sh] {
				c.AddRule(&nftables.Rule{Table: ff.table, Chain: ch, Exprs: ff.shapeRule(sh)})
			}
		}
	}
	for _, sh := range sortedShapes(gone) {
		c.DelSet(ff.shapeSet(sh))
	}
	return grew, nil
}

// commit records what a successful partial sync wrote.
func (np *nftPlane) commit(d *nftDiff, renders map[Name]*nftRendering, refs map[nftElem]int, added []*nftFamily) {
	for _, ff := range added {
		ff.markWritten()
	}
	for f, use := range d.use {
		ff := np.fams[f]
		for sh, delta := range use {
			ff.use[sh] += delta
		}
		for sh := range d.gone[f] {
			delete(ff.shapes, sh)
			delete(ff.use, sh)
			delete(ff.sets, sh.set())
		}
	}
	for e, n := range refs {
		if n == 0 {
			delete(np.fams[e.f].refs, e.refKey())
		} else {
			np.fams[e.f].refs[e.refKey()] = n
		}
	}
	for n, nr := range renders {
		if nr == nil {
			delete(np.written, n)
		} else {
			np.written[n] = nr
		}
	}
}

// addDisplaced renders the changed Services and adds to changed the
// holders of entries that one of them, coming before the holder by
// namespace and name, claims. It returns the renderings.
func (np *nftPlane) addDisplaced(changed map[Name]*Service) map[Name]*nftRendering {
	renders := map[Name]*nftRendering{}
	for more := true; more; {
		more = false
		for _, n := range sortedNames(changed) {
			s := changed[n]
			if s == nil || renders[n] != nil {
				continue
			}
			renders[n] = np.render(s)
			for e := range renders[n].elems {
				o, held := np.owners[entryOf(e)]
				if _, in := changed[o]; !held || in || !n.before(o) {
					continue
				}
				if os := np.env.wanted(o); os != nil {
					changed[o], more = os, true
				}
			}
		}
	}
	return renders
}

// addLosers adds to changed the Services that wanted one of the released
// entries while another held it.
func (np *nftPlane) addLosers(released []string, changed map[Name]*Service) {
	for _, id := range released {
		for n := range np.losers[id] {
			if _, ok := changed[n]; ok {
				continue
			}
			if s := np.env.wanted(n); s != nil {
				changed[n] = s
			}
		}
		delete(np.losers, id)
	}
}

// cleanup deletes the proxy's table in each family.
//
// Equivalent to: nft delete table ip NAME; nft delete table ip6 NAME
func (np *nftPlane) cleanup(ctx context.Context) (err error) {
	c, err := np.connect()
	if err != nil {
		return err
	}
	defer np.dropOnError(&err)
	for _, t := range np.tables() {
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := np.flush(c); err != nil {
		return fmt.Errorf("delete nftables table %q in netns %q: %w", np.env.r.chains.TableName(), np.ns, err)
	}
	np.written = map[Name]*nftRendering{}
	np.fams, np.owners, np.losers = nil, nil, nil
	return nil
}

func (np *nftPlane) stats() (services, endpoints int) {
	for _, r := range np.written {
		services++
		endpoints += r.endpoints
	}
	return services, endpoints
}
