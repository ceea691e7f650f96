package nl

import (
	"syscall"

	"golang.org/x/sys/unix"

	vnl "github.com/vishvananda/netlink/nl"

	"github.com/podnet/podnet/netns"
)

// AddrsOfLoose is AddrsOf as it runs on kernels without strict checking of
// dump requests: a full dump, filtered here.
func AddrsOfLoose(ns *netns.NS, ifindex, family int) ([]LinkAddr, error) {
	return addrsOf(ns, ifindex, family, false)
}

// DumpedIndexes returns the ifindex of every address the kernel sends for a
// strict-checked dump of the addresses of ifindex, before any filtering here.
func DumpedIndexes(ns *netns.NS, ifindex, family int) ([]int, error) {
	msg := vnl.NewIfAddrmsg(family)
	msg.Index = uint32(ifindex)
	var idx []int
	err := withConn(ns, func(c conn) error {
		if err := unix.SetsockoptInt(c.fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); err != nil {
			return err
		}
		return c.request(unix.RTM_GETADDR, unix.NLM_F_DUMP, func(m syscall.NetlinkMessage) error {
			if m.Header.Type == unix.RTM_NEWADDR {
				idx = append(idx, int(vnl.DeserializeIfAddrmsg(m.Data).Index))
			}
			return nil
		}, msg)
	})
	return idx, err
}
