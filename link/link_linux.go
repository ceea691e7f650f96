// Package link changes the state of any network interface in a namespace,
// whatever its type: up and down. Type-specific work lives in the packages
// veth and bridge.
//
// Every function takes the namespace it acts in and uses a netlink socket
// opened there.
package link

import (
	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/ifname"
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
	if err := ifname.Validate(name); err != nil {
		return opErr(err)
	}
	h, err := nl.Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return opErr(nl.Err(err))
	}
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
