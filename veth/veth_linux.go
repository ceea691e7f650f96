package veth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrExist    = podnet.ErrExist
	ErrConflict = podnet.ErrConflict
	ErrInvalid  = podnet.ErrInvalid
)

// Spec describes a veth pair: one end in the namespace Create is given (the
// host side), the other born directly in PeerNS. The zero value of every
// optional field is correct.
type Spec struct {
	Name     string           // host-side name; "" picks "veth" + 8 hex digits
	PeerName string           // required: the name inside PeerNS, e.g. "eth0"
	PeerNS   *netns.NS        // required: where the peer is created
	MTU      int              // 0 keeps the kernel default (1500); both ends
	MAC      net.HardwareAddr // host-side MAC; nil lets the kernel choose
	PeerMAC  net.HardwareAddr // peer MAC; nil lets the kernel choose

	// AddrGenModeNone and PeerAddrGenModeNone keep the kernel from giving
	// the host-side end, or the peer, an IPv6 link-local address when it
	// comes up, and with it from sending duplicate address detection, MLD
	// reports and router solicitations and from adding its link-local
	// routes. A host-side end that becomes a bridge port needs no address
	// of its own; an IPv4-only pod needs none either, and on a bridge its
	// IPv6 chatter would reach every other pod. Addresses added explicitly
	// still work. Each is set before the end is brought up, and ignored on
	// a kernel without IPv6.
	//
	// Equivalent to: ip link set NAME addrgenmode none;
	// ip -n PEERNS link set PEER addrgenmode none
	AddrGenModeNone     bool
	PeerAddrGenModeNone bool

	// MasterIndex, when not 0, is the ifindex of a bridge in ns that the
	// host-side end joins before it comes up. The kernel then makes the
	// port forward when it sees the carrier, in its link-watch worker,
	// instead of in this call: work linear in the bridge's ports moves off
	// the caller's path. Use bridge.WaitForwarding before relying on the
	// port. It is the fast path of bridge.Attach for a new pair; hairpin
	// mode still needs bridge.Attach.
	//
	// Equivalent to: ip link add NAME master BRIDGE type veth peer ...
	MasterIndex int
}

// Pair is a veth pair as it exists after Create.
type Pair struct {
	Name      string // host-side name
	Index     int    // host-side ifindex
	MAC       net.HardwareAddr
	PeerName  string
	PeerIndex int // the peer's ifindex inside PeerNS
	PeerMAC   net.HardwareAddr
	MTU       int
}

// Validate reports the first problem with s, as an error matching
// ErrInvalid, without touching the kernel.
func (s Spec) Validate() error {
	if s.Name != "" {
		if err := link.ValidateName(s.Name); err != nil {
			return err
		}
	}
	if err := link.ValidateName(s.PeerName); err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	if s.PeerNS == nil {
		return podnet.Invalid("veth peer namespace is nil")
	}
	if s.MasterIndex < 0 {
		return podnet.Invalid("veth master ifindex %d: negative", s.MasterIndex)
	}
	if s.MTU != 0 && (s.MTU < 68 || s.MTU > 65535) {
		return podnet.Invalid("veth MTU %d: outside 68..65535", s.MTU)
	}
	for _, m := range []net.HardwareAddr{s.MAC, s.PeerMAC} {
		if m == nil {
			continue
		}
		if len(m) != 6 || m[0]&1 != 0 {
			return podnet.Invalid("veth MAC %q: not a 6-byte unicast address", m)
		}
	}
	return nil
}

// Create makes a veth pair with one end named spec.Name in ns and the other
// named spec.PeerName created directly inside spec.PeerNS, so the peer never
// exists in ns under a name that could clash. Both ends are set up. It fails
// with ErrExist if either name is taken; on any failure no link is left.
//
// Equivalent to: ip link add NAME mtu MTU type veth peer name PEER netns PEERNS;
// ip link set NAME up; ip -n PEERNS link set PEER up
func Create(ns *netns.NS, spec Spec) (*Pair, error) {
	if err := spec.Validate(); err != nil {
		return nil, &podnet.OpError{Op: "create", Kind: "veth", Name: spec.Name, NetNS: ns.String(), Err: err}
	}
	h, err := nl.Handle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ph, err := nl.Handle(spec.PeerNS)
	if err != nil {
		return nil, err
	}
	defer ph.Close()

	opErr := func(name string, err error) error {
		return &podnet.OpError{Op: "create", Kind: "veth", Name: name, NetNS: ns.String(), Err: err}
	}
	if _, err := ph.LinkByName(spec.PeerName); err == nil {
		return nil, opErr(spec.Name, fmt.Errorf("peer %q in netns %q: %w", spec.PeerName, spec.PeerNS, ErrExist))
	}

	name := spec.Name
	for attempt := 0; ; attempt++ {
		if spec.Name == "" {
			name = RandomName()
		}
		err = h.LinkAdd(vethLink(name, spec))
		if err == nil {
			break
		}
		// A generated name may collide; retry a few times. A given name
		// that exists is the caller's problem.
		if !nl.IsExist(err) || spec.Name != "" || attempt == 3 {
			return nil, opErr(name, nl.Err(err))
		}
	}
	p, err := setUp(h, ph, name, spec)
	if err != nil {
		if l, lerr := h.LinkByName(name); lerr == nil {
			h.LinkDel(l) // removes both ends
		}
		return nil, opErr(name, err)
	}
	return p, nil
}

func vethLink(name string, spec Spec) *netlink.Veth {
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.MTU = spec.MTU
	la.HardwareAddr = spec.MAC
	return &netlink.Veth{
		LinkAttrs:        la,
		PeerName:         spec.PeerName,
		PeerHardwareAddr: spec.PeerMAC,
		PeerNamespace:    netlink.NsFd(spec.PeerNS.Fd()),
		PeerMTU:          uint32(spec.MTU),
	}
}

func setUp(h, ph *netlink.Handle, name string, spec Spec) (*Pair, error) {
	peerName := spec.PeerName
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, nl.Err(err)
	}
	pl, err := ph.LinkByName(peerName)
	if err != nil {
		return nil, fmt.Errorf("peer %q: %w", peerName, nl.Err(err))
	}
	if spec.AddrGenModeNone {
		if err := addrGenModeNone(h, l); err != nil {
			return nil, err
		}
	}
	if spec.PeerAddrGenModeNone {
		if err := addrGenModeNone(ph, pl); err != nil {
			return nil, fmt.Errorf("peer: %w", err)
		}
	}
	if spec.MasterIndex != 0 {
		if err := h.LinkSetMasterByIndex(l, spec.MasterIndex); err != nil {
			return nil, fmt.Errorf("join master ifindex %d: %w", spec.MasterIndex, nl.Err(err))
		}
	}
	if err := ph.LinkSetUp(pl); err != nil {
		return nil, fmt.Errorf("set peer %q up: %w", peerName, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set up: %w", err)
	}
	a, pa := l.Attrs(), pl.Attrs()
	return &Pair{
		Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU,
		PeerName: pa.Name, PeerIndex: pa.Index, PeerMAC: pa.HardwareAddr,
	}, nil
}

func addrGenModeNone(h *netlink.Handle, l netlink.Link) error {
	err := h.LinkSetIP6AddrGenMode(l, vnl.IN6_ADDR_GEN_MODE_NONE)
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) { // no IPv6 in this kernel
		return fmt.Errorf("%s: addrgenmode none: %w", l.Attrs().Name, nl.Err(err))
	}
	return nil
}

// Delete removes the veth named name in ns, and with it its peer. A missing
// link is not an error; a link of another type is ErrConflict.
//
// Equivalent to: ip link del NAME
func Delete(ns *netns.NS, name string) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "delete", Kind: "veth", Name: name, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(name); err != nil {
		return opErr(err)
	}
	h, l, err := nl.Link(ns, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return opErr(err)
	}
	defer h.Close()
	if l.Type() != "veth" {
		return opErr(fmt.Errorf("%w: link is of type %s", ErrConflict, l.Type()))
	}
	if err := h.LinkDel(l); err != nil && !nl.IsNotFound(err) {
		return opErr(err)
	}
	return nil
}

// Link is one end of a veth pair as seen in its namespace.
type Link struct {
	Name      string
	Index     int
	MAC       net.HardwareAddr
	MTU       int
	Up        bool
	Master    int // ifindex of the bridge it is attached to, 0 if none
	PeerIndex int // ifindex of the other end, in the other end's namespace
}

// Get returns the veth end named name in ns. ErrNotFound if there is none,
// ErrConflict if the link is not a veth.
//
// Equivalent to: ip link show NAME; ethtool -S NAME | grep peer_ifindex
func Get(ns *netns.NS, name string) (*Link, error) {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "get", Kind: "veth", Name: name, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(name); err != nil {
		return nil, opErr(err)
	}
	h, l, err := nl.Link(ns, name)
	if err != nil {
		return nil, opErr(err)
	}
	defer h.Close()
	if l.Type() != "veth" {
		return nil, opErr(fmt.Errorf("%w: link is of type %s", ErrConflict, l.Type()))
	}
	return linkOf(l), nil
}

func linkOf(l netlink.Link) *Link {
	a := l.Attrs()
	return &Link{
		Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU,
		Up: a.Flags&net.FlagUp != 0, Master: a.MasterIndex,
		// IFLA_LINK of a veth is its peer's ifindex (what ethtool
		// reports as peer_ifindex).
		PeerIndex: a.ParentIndex,
	}
}

// Peer resolves the other end of the veth named name in ns, which must live
// in peerNS (for a pod's eth0, the node's namespace). It fails with
// ErrNotFound when peerNS holds no such peer.
//
// Equivalent to: ethtool -S NAME (peer_ifindex), then ip -n PEERNS link | grep '^IDX:'
func Peer(ns *netns.NS, name string, peerNS *netns.NS) (*Link, error) {
	end, err := Get(ns, name)
	if err != nil {
		return nil, err
	}
	opErr := func(err error) error {
		return &podnet.OpError{Op: "find peer of", Kind: "veth", Name: name, NetNS: ns.String(), Err: err}
	}
	ph, err := nl.Handle(peerNS)
	if err != nil {
		return nil, err
	}
	defer ph.Close()
	pl, err := ph.LinkByIndex(end.PeerIndex)
	if err != nil {
		return nil, opErr(fmt.Errorf("ifindex %d in netns %q: %w", end.PeerIndex, peerNS, nl.Err(err)))
	}
	// Index numbers repeat across namespaces: the candidate must be a veth
	// whose own peer is our end.
	if pl.Type() != "veth" || pl.Attrs().ParentIndex != end.Index || !samePeerNS(ph, ns, pl) {
		return nil, opErr(fmt.Errorf("ifindex %d in netns %q is not its peer: %w", end.PeerIndex, peerNS, ErrNotFound))
	}
	return linkOf(pl), nil
}

// samePeerNS checks that pl's peer lives in ns, using the namespace id
// (IFLA_LINK_NETNSID) peerNS assigned to ns, when it has one.
func samePeerNS(ph *netlink.Handle, ns *netns.NS, pl netlink.Link) bool {
	id, err := ph.GetNetNsIdByFd(ns.Fd())
	if err != nil || id < 0 {
		return true // no id assigned: cannot tell, index checks must do
	}
	return pl.Attrs().NetNsID == id
}

// RandomName returns "veth" followed by 8 random hex digits, the form the
// reference CNI plugins use for host-side names.
func RandomName() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(errors.New("veth: no randomness: " + err.Error()))
	}
	return "veth" + hex.EncodeToString(b)
}
