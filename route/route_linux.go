package route

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrExist    = podnet.ErrExist
	ErrInvalid  = podnet.ErrInvalid
)

// Scope is a route's scope (RT_SCOPE_*).
type Scope uint8

// Route scopes, as `ip route` names them.
const (
	ScopeUniverse Scope = unix.RT_SCOPE_UNIVERSE // "global"
	ScopeLink     Scope = unix.RT_SCOPE_LINK
	ScopeHost     Scope = unix.RT_SCOPE_HOST
)

// Protocol is the routing protocol number a route is tagged with (RTPROT_*,
// `ip route ... proto N`). Sync uses it to tell the routes it owns.
type Protocol uint8

// Well-known protocol numbers.
const (
	ProtocolUnspec Protocol = unix.RTPROT_UNSPEC
	ProtocolKernel Protocol = unix.RTPROT_KERNEL // routes the kernel made for addresses
	ProtocolBoot   Protocol = unix.RTPROT_BOOT   // what `ip route add` uses
	ProtocolStatic Protocol = unix.RTPROT_STATIC
	// ProtocolPodnet marks routes podnet programs by default (pod CIDR routes
	// between nodes). 180 is unassigned in /etc/iproute2/rt_protos.
	ProtocolPodnet Protocol = 180
)

// String returns the name `ip route` prints for p, or its number.
func (p Protocol) String() string {
	switch p {
	case ProtocolKernel:
		return "kernel"
	case ProtocolBoot:
		return "boot"
	case ProtocolStatic:
		return "static"
	case ProtocolPodnet:
		return "podnet"
	}
	return fmt.Sprint(uint8(p))
}

// MainTable is the table routes go to when Table is 0 (RT_TABLE_MAIN).
const MainTable = unix.RT_TABLE_MAIN

// Route is one unicast route. Its key — what makes two routes "the same
// route" to the kernel — is (family, Dst, Table, Metric).
type Route struct {
	Dst      netip.Prefix // required; 0.0.0.0/0 or ::/0 for a default route
	Gateway  netip.Addr   // next hop; zero for a directly connected route
	Dev      string       // output interface; required when Gateway is zero
	Src      netip.Addr   // preferred source address; optional
	Metric   int          // priority; 0 is the kernel default
	Table    int          // 0 means the main table
	Scope    Scope        // 0 (universe); a route with only Dev gets ScopeLink
	Protocol Protocol     // 0 means ProtocolBoot, as with `ip route add`
}

// String renders r the way `ip route` prints it.
func (r Route) String() string {
	s := r.Dst.String()
	if r.Dst.Bits() == 0 {
		s = "default"
	}
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	if r.Table != 0 && r.Table != MainTable {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	if r.Protocol != 0 {
		s += " proto " + r.Protocol.String()
	}
	if r.Scope == ScopeLink {
		s += " scope link"
	} else if r.Scope == ScopeHost {
		s += " scope host"
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

// Validate reports the first problem with r as an error matching ErrInvalid.
func (r Route) Validate() error {
	switch {
	case !r.Dst.IsValid():
		return podnet.Invalid("route: destination is not set")
	case r.Dst != r.Dst.Masked():
		return podnet.Invalid("route %s: destination has host bits set (want %s)", r.Dst, r.Dst.Masked())
	case r.Gateway.IsValid() && r.Gateway.Is4() != r.Dst.Addr().Is4():
		return podnet.Invalid("route %s: gateway %s is of another address family", r.Dst, r.Gateway)
	case r.Src.IsValid() && r.Src.Is4() != r.Dst.Addr().Is4():
		return podnet.Invalid("route %s: source %s is of another address family", r.Dst, r.Src)
	case !r.Gateway.IsValid() && r.Dev == "":
		return podnet.Invalid("route %s: needs a gateway or a device", r.Dst)
	case r.Metric < 0 || r.Table < 0:
		return podnet.Invalid("route %s: negative metric or table", r.Dst)
	}
	if r.Dev != "" {
		if err := link.ValidateName(r.Dev); err != nil {
			return fmt.Errorf("route %s: %w", r.Dst, err)
		}
	}
	return nil
}

type key struct {
	dst    netip.Prefix
	table  int
	metric int
}

func (r Route) key() key {
	n := r.normal()
	return key{n.Dst, n.Table, n.Metric}
}

// normal fills in the defaults the kernel would, so that a desired route
// compares equal to the one read back.
func (r Route) normal() Route {
	if r.Table == 0 {
		r.Table = MainTable
	}
	if r.Protocol == 0 {
		r.Protocol = ProtocolBoot
	}
	if r.Scope == 0 && !r.Gateway.IsValid() {
		r.Scope = ScopeLink
	}
	if r.Metric == 0 && r.Dst.Addr().Is6() {
		r.Metric = 1024 // IP6_RT_PRIO_USER, what the kernel stores for 0
	}
	return r
}

// handle bundles a netlink handle with its namespace for error messages.
type handle struct {
	*netlink.Handle
	ns *netns.NS
}

func open(ns *netns.NS) (handle, error) {
	h, err := nl.Handle(ns)
	return handle{h, ns}, err
}

func (h handle) toNetlink(r Route) (*netlink.Route, error) {
	r = r.normal()
	nr := &netlink.Route{
		Dst:      nl.IPNet(r.Dst),
		Gw:       nl.IP(r.Gateway),
		Src:      nl.IP(r.Src),
		Priority: r.Metric,
		Table:    r.Table,
		Scope:    netlink.Scope(r.Scope),
		Protocol: netlink.RouteProtocol(r.Protocol),
		Family:   family(r.Dst.Addr()),
	}
	if r.Dev != "" {
		l, err := h.LinkByName(r.Dev)
		if err != nil {
			return nil, fmt.Errorf("device %q: %w", r.Dev, nl.Err(err))
		}
		nr.LinkIndex = l.Attrs().Index
	}
	return nr, nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func (h handle) opErr(op string, r Route, err error) error {
	return &podnet.OpError{Op: op, Kind: "route", Name: r.String(), NetNS: h.ns.String(), Err: err}
}

// Create adds r and fails with ErrExist if a route with its key exists.
//
// Equivalent to: ip route add ROUTE
func Create(ns *netns.NS, r Route) error {
	return apply(ns, "create", r, func(h handle, nr *netlink.Route) error { return h.RouteAdd(nr) })
}

// Replace adds r or overwrites the route with its key.
//
// Equivalent to: ip route replace ROUTE
func Replace(ns *netns.NS, r Route) error {
	return apply(ns, "replace", r, func(h handle, nr *netlink.Route) error { return h.RouteReplace(nr) })
}

func apply(ns *netns.NS, op string, r Route, fn func(handle, *netlink.Route) error) error {
	if err := r.Validate(); err != nil {
		return &podnet.OpError{Op: op, Kind: "route", Name: r.String(), NetNS: ns.String(), Err: err}
	}
	h, err := open(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	nr, err := h.toNetlink(r)
	if err == nil {
		err = nl.Err(fn(h, nr))
	}
	if err != nil {
		return h.opErr(op, r, err)
	}
	return nil
}

// Ensure makes r present: it does nothing when an identical route exists
// and replaces a route with the same key that differs.
//
// Equivalent to: ip route replace ROUTE (skipped when already so)
func Ensure(ns *netns.NS, r Route) error {
	if err := r.Validate(); err != nil {
		return &podnet.OpError{Op: "ensure", Kind: "route", Name: r.String(), NetNS: ns.String(), Err: err}
	}
	have, err := List(ns, Filter{Table: r.normal().Table})
	if err != nil {
		return err
	}
	for _, h := range have {
		if r.satisfiedBy(h) {
			return nil
		}
	}
	return Replace(ns, r)
}

// satisfiedBy reports whether the kernel's route h is what r asks for:
// same key, protocol and gateway, and the same device, source and scope
// where r sets them (the kernel fills those in otherwise).
func (r Route) satisfiedBy(h Route) bool {
	w := r.normal()
	return w.key() == h.key() && w.Protocol == h.Protocol && w.Gateway == h.Gateway &&
		(w.Dev == "" || w.Dev == h.Dev) &&
		(!w.Src.IsValid() || w.Src == h.Src) &&
		(r.Scope == 0 || r.Scope == h.Scope)
}

// Delete removes the route with r's key (and, when set, r's gateway and
// device). A missing route is not an error.
//
// Equivalent to: ip route del ROUTE
func Delete(ns *netns.NS, r Route) error {
	if err := r.Validate(); err != nil {
		return &podnet.OpError{Op: "delete", Kind: "route", Name: r.String(), NetNS: ns.String(), Err: err}
	}
	h, err := open(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	nr, err := h.toNetlink(r)
	if nl.IsNotFound(err) {
		return nil // its device is gone, and so is the route
	}
	if err != nil {
		return h.opErr("delete", r, err)
	}
	nr.Scope, nr.Protocol = 0, 0 // match whatever scope and owner it has
	if err := h.RouteDel(nr); err != nil && !nl.IsNotFound(err) {
		return h.opErr("delete", r, err)
	}
	return nil
}

// EnsureDefault makes gw, reached through dev, the default route of ns:
// the route a pod gets towards its bridge's gateway.
//
// Equivalent to: ip route replace default via GW dev DEV
func EnsureDefault(ns *netns.NS, gw netip.Addr, dev string) error {
	if !gw.IsValid() {
		return &podnet.OpError{Op: "ensure default", Kind: "route", NetNS: ns.String(), Err: podnet.Invalid("gateway is not set")}
	}
	bits := 0
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), bits)
	if gw.Is6() {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), bits)
	}
	return Ensure(ns, Route{Dst: dst, Gateway: gw, Dev: dev})
}

// Filter selects routes for List. The zero Filter lists the main table.
type Filter struct {
	Table    int      // 0: main table; AllTables: every table
	Dev      string   // only routes through this device
	Protocol Protocol // only routes with this protocol (0: any)
	Family   Family   // IPv4 or IPv6; 0 for both
}

// AllTables in Filter.Table lists routes of every table.
const AllTables = -1

// List returns the unicast routes of ns that match f, sorted by table,
// destination and metric. Local and broadcast routes the kernel keeps for
// addresses are left out.
//
// Equivalent to: ip route show [table T] [dev D] [proto P]
func List(ns *netns.NS, f Filter) ([]Route, error) {
	h, err := open(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	opErr := func(err error) error {
		return &podnet.OpError{Op: "list", Kind: "routes", NetNS: ns.String(), Err: err}
	}
	filter := &netlink.Route{Table: f.Table}
	mask := uint64(netlink.RT_FILTER_TABLE)
	switch f.Table {
	case 0:
		filter.Table = MainTable
	case AllTables:
		filter.Table = unix.RT_TABLE_UNSPEC
	}
	if f.Protocol != 0 {
		filter.Protocol = netlink.RouteProtocol(f.Protocol)
		mask |= netlink.RT_FILTER_PROTOCOL
	}
	if f.Dev != "" {
		l, err := h.LinkByName(f.Dev)
		if err != nil {
			return nil, opErr(fmt.Errorf("device %q: %w", f.Dev, nl.Err(err)))
		}
		filter.LinkIndex = l.Attrs().Index
		mask |= netlink.RT_FILTER_OIF
	}
	fam := netlink.FAMILY_ALL
	switch f.Family {
	case IPv4:
		fam = netlink.FAMILY_V4
	case IPv6:
		fam = netlink.FAMILY_V6
	}
	nrs, err := nl.Dump(func() ([]netlink.Route, error) { return h.RouteListFiltered(fam, filter, mask) })
	if err != nil {
		return nil, opErr(err)
	}
	links, err := nl.Dump(h.LinkList)
	if err != nil {
		return nil, opErr(err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	out := make([]Route, 0, len(nrs))
	for _, nr := range nrs {
		if nr.Type != unix.RTN_UNICAST || len(nr.MultiPath) > 0 {
			continue
		}
		out = append(out, fromNetlink(nr, names))
	}
	slices.SortFunc(out, func(a, b Route) int {
		return cmp.Or(cmp.Compare(a.Table, b.Table), a.Dst.Addr().Compare(b.Dst.Addr()),
			cmp.Compare(a.Dst.Bits(), b.Dst.Bits()), cmp.Compare(a.Metric, b.Metric))
	})
	return out, nil
}

func fromNetlink(nr netlink.Route, names map[int]string) Route {
	r := Route{
		Dst:      nl.Prefix(nr.Dst),
		Gateway:  nl.Addr(nr.Gw),
		Dev:      names[nr.LinkIndex],
		Src:      nl.Addr(nr.Src),
		Metric:   nr.Priority,
		Table:    nr.Table,
		Scope:    Scope(nr.Scope),
		Protocol: Protocol(nr.Protocol),
	}
	if nr.Dst == nil { // default route
		r.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if nr.Family == netlink.FAMILY_V6 {
			r.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	}
	return r
}

// SyncResult tells what Sync changed.
type SyncResult struct {
	Added   []Route // created or replaced
	Removed []Route
}

// Sync makes the routes tagged with protocol owner, in every table, exactly
// desired: it adds or replaces what is missing or different and deletes
// owned routes that are not desired. Routes with another protocol are never
// touched, even if their key matches a desired route: such a clash is
// reported as ErrExist after the rest is synced. Every desired route is
// validated before anything changes. Sync is idempotent; after a partial
// failure calling it again converges.
//
// Equivalent to: ip route replace ... proto OWNER for each desired route;
// ip route del ... for each stale one of `ip route show table all proto OWNER`
func Sync(ns *netns.NS, owner Protocol, desired []Route) (SyncResult, error) {
	var res SyncResult
	if owner == ProtocolUnspec || owner == ProtocolKernel {
		return res, &podnet.OpError{Op: "sync", Kind: "routes", NetNS: ns.String(), Err: podnet.Invalid("owner protocol %d is reserved", owner)}
	}
	want := make(map[key]Route, len(desired))
	for _, r := range desired {
		r.Protocol = owner
		if err := r.Validate(); err != nil {
			return res, &podnet.OpError{Op: "sync", Kind: "route", Name: r.String(), NetNS: ns.String(), Err: err}
		}
		if _, dup := want[r.key()]; dup {
			return res, &podnet.OpError{Op: "sync", Kind: "route", Name: r.String(), NetNS: ns.String(), Err: podnet.Invalid("two desired routes share destination, table and metric")}
		}
		want[r.key()] = r
	}
	all, err := List(ns, Filter{Table: AllTables})
	if err != nil {
		return res, err
	}
	have := make(map[key]Route, len(all))
	foreign := make(map[key]bool)
	for _, r := range all {
		if r.Protocol == owner {
			have[r.key()] = r
		} else {
			foreign[r.key()] = true
		}
	}
	var clash error
	for _, k := range sortedKeys(want) {
		r := want[k]
		if h, ok := have[k]; ok && r.satisfiedBy(h) {
			continue
		}
		if foreign[k] && !hasKey(have, k) {
			if clash == nil {
				clash = &podnet.OpError{Op: "sync", Kind: "route", Name: r.String(), NetNS: ns.String(), Err: fmt.Errorf("%w: a route with this destination belongs to another protocol", ErrExist)}
			}
			continue
		}
		if err := Replace(ns, r); err != nil {
			return res, err
		}
		res.Added = append(res.Added, r)
	}
	for _, k := range sortedKeys(have) {
		if _, ok := want[k]; ok {
			continue
		}
		if err := Delete(ns, have[k]); err != nil {
			return res, err
		}
		res.Removed = append(res.Removed, have[k])
	}
	return res, clash
}

func hasKey(m map[key]Route, k key) bool { _, ok := m[k]; return ok }

func sortedKeys(m map[key]Route) []key {
	ks := make([]key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b key) int {
		return cmp.Or(cmp.Compare(a.table, b.table), a.dst.Addr().Compare(b.dst.Addr()),
			cmp.Compare(a.dst.Bits(), b.dst.Bits()), cmp.Compare(a.metric, b.metric))
	})
	return ks
}

// Family is an IP family (podnet.Family).
type Family = podnet.Family

// The two families.
const (
	IPv4 = podnet.IPv4
	IPv6 = podnet.IPv6
)

// Forwarding reports whether ns forwards packets of family f, as
// net.ipv4.ip_forward or net.ipv6.conf.all.forwarding say. It asks over
// netlink (RTM_GETNETCONF) rather than reading /proc/sys/net, whose path
// lookup grows with the namespaces on the machine that have used it
// (docs/performance.md).
//
// Equivalent to: ip -4 netconf show dev all (or -6)
func Forwarding(ns *netns.NS, f Family) (bool, error) {
	if _, err := forwardingKey(f); err != nil {
		return false, err
	}
	af := unix.AF_INET
	if f == IPv6 {
		af = unix.AF_INET6
	}
	return nl.Forwarding(ns, af)
}

// SetForwarding turns forwarding of family f on or off in ns; a node
// namespace needs it on to route between pods and nodes. It reads the
// setting with Forwarding first and writes the sysctl only when it must
// change, so the common call, on a node where it is already on, writes
// nothing.
//
// Equivalent to: ip netns exec NS sysctl -w net.ipv4.ip_forward=1
func SetForwarding(ns *netns.NS, f Family, on bool) error {
	k, err := forwardingKey(f)
	if err != nil {
		return err
	}
	if cur, err := Forwarding(ns, f); err == nil && cur == on {
		return nil
	}
	v := "0"
	if on {
		v = "1"
	}
	return sysctl.Set(ns, k, v)
}

func forwardingKey(f Family) (string, error) {
	switch f {
	case IPv4:
		return "net.ipv4.ip_forward", nil
	case IPv6:
		return "net.ipv6.conf.all.forwarding", nil
	}
	return "", podnet.Invalid("forwarding: %v: want IPv4 or IPv6", f)
}

// Get returns the route ns would use to send a packet to dst, as the
// kernel resolves it (whatever table or rule holds it).
//
// Equivalent to: ip route get DST
func Get(ns *netns.NS, dst netip.Addr) (Route, error) {
	h, err := open(ns)
	if err != nil {
		return Route{}, err
	}
	defer h.Close()
	opErr := func(err error) error {
		return &podnet.OpError{Op: "get", Kind: "route", Name: "to " + dst.String(), NetNS: ns.String(), Err: err}
	}
	if !dst.IsValid() {
		return Route{}, opErr(podnet.Invalid("destination is not set"))
	}
	nrs, err := h.RouteGet(nl.IP(dst))
	if err != nil {
		return Route{}, opErr(nl.Err(err))
	}
	if len(nrs) == 0 {
		return Route{}, opErr(ErrNotFound)
	}
	var name string
	if l, err := h.LinkByIndex(nrs[0].LinkIndex); err == nil {
		name = l.Attrs().Name
	}
	r := fromNetlink(nrs[0], map[int]string{nrs[0].LinkIndex: name})
	r.Dst = netip.PrefixFrom(dst, dst.BitLen())
	return r, nil
}
