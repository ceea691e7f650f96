package nl

import (
	"fmt"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

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
// slave data, so this reads IFLA_LINKINFO itself, in one RTM_GETLINK.
//
// Equivalent to: ip -d link show dev NAME (bridge_slave state)
func PortState(ns *netns.NS, name string) (state uint8, isPort bool, err error) {
	err = withConn(ns, func(c *mnl.Conn) error {
		ae := mnl.NewAttributeEncoder()
		ae.String(unix.IFLA_IFNAME, name)
		attrs, err := ae.Encode()
		if err != nil {
			return err
		}
		msgs, err := execute(c, unix.RTM_GETLINK, 0, append(ifInfomsg(0), attrs...))
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_NEWLINK && len(m.Data) >= unix.SizeofIfInfomsg {
				state, isPort, err = parsePortState(m.Data[unix.SizeofIfInfomsg:])
			}
		}
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("port state of %q in netns %q: %w", name, ns, Err(err))
	}
	return state, isPort, nil
}

// parsePortState finds IFLA_BRPORT_STATE in the attributes of an
// RTM_NEWLINK message: IFLA_LINKINFO { IFLA_INFO_SLAVE_KIND "bridge",
// IFLA_INFO_SLAVE_DATA { IFLA_BRPORT_STATE u8 } }.
func parsePortState(b []byte) (state uint8, isPort bool, err error) {
	ad, err := mnl.NewAttributeDecoder(b)
	if err != nil {
		return 0, false, err
	}
	for ad.Next() {
		if ad.Type() != unix.IFLA_LINKINFO {
			continue
		}
		ad.Nested(func(info *mnl.AttributeDecoder) error {
			bridge := false
			for info.Next() {
				switch info.Type() {
				case unix.IFLA_INFO_SLAVE_KIND:
					bridge = info.String() == "bridge"
				case unix.IFLA_INFO_SLAVE_DATA:
					// The kernel puts the kind first; a port of another
					// kind of master has other data here.
					if bridge {
						info.Nested(func(data *mnl.AttributeDecoder) error {
							for data.Next() {
								if data.Type() == unix.IFLA_BRPORT_STATE {
									state, isPort = data.Uint8(), true
								}
							}
							return nil
						})
					}
				}
			}
			return nil
		})
	}
	return state, isPort, ad.Err()
}
