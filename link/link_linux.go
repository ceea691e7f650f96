package link

import (
	"net"
	"slices"
	"strconv"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrInvalid  = podnet.ErrInvalid
)

// SetUp brings the link name up (a pod's lo, for instance).
//
// Equivalent to: ip link set NAME up
func SetUp(ns *netns.NS, name string) error { return set(ns, name, true) }

// SetDown brings the link name down.
//
// Equivalent to: ip link set NAME down
func SetDown(ns *netns.NS, name string) error { return set(ns, name, false) }

func set(ns *netns.NS, name string, up bool) error {
	op := "set down"
	if up {
		op = "set up"
	}
	opErr := func(err error) error {
		return &podnet.OpError{Op: op, Kind: "link", Name: name, NetNS: ns.String(), Err: err}
	}
	if err := ValidateName(name); err != nil {
		return opErr(err)
	}
	h, l, err := nl.Link(ns, name)
	if err != nil {
		return opErr(err)
	}
	defer h.Close()
	if up {
		err = h.LinkSetUp(l)
	} else {
		err = h.LinkSetDown(l)
	}
	if err != nil {
		return opErr(nl.Err(err))
	}
	return nil
}

// Rename gives the link name the name newName. The kernel refuses to
// rename a link that is up (EBUSY); set it down first.
//
// Equivalent to: ip link set NAME name NEWNAME
func Rename(ns *netns.NS, name, newName string) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "rename to " + strconv.Quote(newName), Kind: "link", Name: name, NetNS: ns.String(), Err: err}
	}
	if err := ValidateName(name); err != nil {
		return opErr(err)
	}
	if err := ValidateName(newName); err != nil {
		return opErr(err)
	}
	h, l, err := nl.Link(ns, name)
	if err != nil {
		return opErr(err)
	}
	defer h.Close()
	if err := h.LinkSetName(l, newName); err != nil {
		return opErr(nl.Err(err))
	}
	return nil
}

// Info describes one interface as `ip -d link show` does.
type Info struct {
	Name   string
	Index  int
	Type   string // "veth", "bridge", "loopback" …
	MAC    net.HardwareAddr
	MTU    int
	Up     bool
	Master int // ifindex of the bridge it is a port of; 0 if none
	// Peer is, for a veth, the ifindex of its other end (in that end's
	// namespace); for other types the kernel's IFLA_LINK, usually 0.
	Peer int
}

// List returns the interfaces of ns, sorted by ifindex.
//
// Equivalent to: ip -d link show
func List(ns *netns.NS) ([]Info, error) {
	h, err := nl.Handle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := nl.Dump(h.LinkList)
	if err != nil {
		return nil, &podnet.OpError{Op: "list", Kind: "links", NetNS: ns.String(), Err: err}
	}
	out := make([]Info, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		typ := l.Type()
		if typ == "device" && a.Flags&net.FlagLoopback != 0 {
			typ = "loopback"
		}
		out = append(out, Info{
			Name: a.Name, Index: a.Index, Type: typ, MAC: a.HardwareAddr, MTU: a.MTU,
			Up: a.Flags&net.FlagUp != 0, Master: a.MasterIndex, Peer: a.ParentIndex,
		})
	}
	slices.SortFunc(out, func(a, b Info) int { return a.Index - b.Index })
	return out, nil
}
