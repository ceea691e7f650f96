package nl

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	vnl "github.com/vishvananda/netlink/nl"

	"github.com/podnet/podnet/netns"
)

// Bridge port states (linux/if_bridge.h, BR_STATE_*).
const (
	PortDisabled   = 0
	PortListening  = 1
	PortLearning   = 2
	PortForwarding = 3
	PortBlocking   = 4
)

// PortState returns the spanning-tree state of the bridge port named name
// in ns (PortDisabled … PortBlocking); isPort is false when the link is not
// a bridge port, and a missing link gives an error matching
// podnet.ErrNotFound. vishvananda/netlink does not decode the bridge's
// slave data, so this reads IFLA_LINKINFO itself, in one request.
//
// Equivalent to: ip -d link show dev NAME (bridge_slave state)
func PortState(ns *netns.NS, name string) (state uint8, isPort bool, err error) {
	msg := vnl.NewIfInfomsg(unix.AF_UNSPEC)
	ifname := vnl.NewRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(name))
	err = withConn(ns, func(c conn) error {
		return c.request(unix.RTM_GETLINK, 0, func(m syscall.NetlinkMessage) error {
			if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
				return nil
			}
			attrs, err := vnl.ParseRouteAttr(m.Data[unix.SizeofIfInfomsg:])
			if err != nil {
				return err
			}
			info := attr(attrs, unix.IFLA_LINKINFO)
			if info == nil {
				return nil
			}
			infos, err := vnl.ParseRouteAttr(info)
			if err != nil {
				return err
			}
			if kind := attr(infos, unix.IFLA_INFO_SLAVE_KIND); string(kind) != "bridge\x00" {
				return nil
			}
			data, err := vnl.ParseRouteAttr(attr(infos, unix.IFLA_INFO_SLAVE_DATA))
			if err != nil {
				return err
			}
			if st := attr(data, unix.IFLA_BRPORT_STATE); len(st) == 1 {
				state, isPort = st[0], true
			}
			return nil
		}, msg, ifname)
	})
	if err != nil {
		return 0, false, fmt.Errorf("port state of %q in netns %q: %w", name, ns, Err(err))
	}
	return state, isPort, nil
}
