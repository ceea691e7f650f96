package nl

import (
	"encoding/binary"
	"fmt"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/netns"
)

// Three requests that vishvananda/netlink cannot make go through
// mdlayher/netlink instead, each for a measured need on a CNI ADD's path
// (docs/performance.md):
//
//   - AddrsOf: a strict-checked dump of one link's addresses. AddrList
//     dumps every link's, and a node has a link per pod.
//   - Forwarding: RTM_GETNETCONF. The alternative, /proc/sys/net, costs a
//     path lookup that grows with the namespaces on the machine.
//   - PortState: a bridge port's STP state, which vishvananda/netlink
//     does not decode from IFLA_INFO_SLAVE_DATA.
//
// mdlayher/netlink sends each request, matches the reply's sequence
// number and port, reads a multi-part reply to NLMSG_DONE and turns an
// NLMSG_ERROR (or a failed dump's NLMSG_DONE) into an *OpError wrapping
// the errno. What it leaves to its caller is NLM_F_DUMP_INTR: execute
// checks for it.

// withConn runs fn with a NETLINK_ROUTE socket in ns, and closes the
// socket afterwards.
func withConn(ns *netns.NS, fn func(c *mnl.Conn) error) error {
	c, err := dial(ns)
	if err != nil {
		return fmt.Errorf("netlink socket in netns %q: %w", ns, err)
	}
	defer c.Close()
	return fn(c)
}

// dial opens a NETLINK_ROUTE socket in ns: right where the thread is when
// that is ns (the usual case, the node's own namespace), else on a thread
// mdlayher/netlink switches into ns and back.
func dial(ns *netns.NS) (*mnl.Conn, error) {
	return mnl.Dial(unix.NETLINK_ROUTE, &mnl.Config{NetNS: ns.DialFd()})
}

// execute sends req and returns the messages of its reply, NLMSG_DONE
// left out. A reply the kernel marked inconsistent (NLM_F_DUMP_INTR: the
// table changed between two parts of a dump) gives
// netlink.ErrDumpInterrupted, for Dump to retry. Only data messages are
// checked: mdlayher/netlink drops the NLMSG_DONE, and a flag there alone
// means the last part had no data, so what came was read in one pass.
func execute(c *mnl.Conn, typ uint16, flags mnl.HeaderFlags, data []byte) ([]mnl.Message, error) {
	msgs, err := c.Execute(mnl.Message{
		Header: mnl.Header{Type: mnl.HeaderType(typ), Flags: mnl.Request | flags},
		Data:   data,
	})
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if m.Header.Flags&mnl.DumpInterrupted != 0 {
			return nil, netlink.ErrDumpInterrupted
		}
	}
	return msgs, nil
}

// ifInfomsg is a struct ifinfomsg asking about the link ifindex (0: the
// one an IFLA_IFNAME attribute names).
func ifInfomsg(ifindex int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(ifindex))
	return b
}

// ifAddrmsg is a struct ifaddrmsg for a dump of the family addresses of
// ifindex.
func ifAddrmsg(family, ifindex int) []byte {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = byte(family)
	binary.NativeEndian.PutUint32(b[4:], uint32(ifindex))
	return b
}
