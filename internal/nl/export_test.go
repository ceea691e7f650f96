package nl

import (
	"encoding/binary"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

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
	var idx []int
	err := withConn(ns, func(c *mnl.Conn) error {
		if err := c.SetOption(mnl.GetStrictCheck, true); err != nil {
			return err
		}
		msgs, err := execute(c, unix.RTM_GETADDR, mnl.Dump, ifAddrmsg(family, ifindex))
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_NEWADDR {
				idx = append(idx, int(binary.NativeEndian.Uint32(m.Data[4:])))
			}
		}
		return err
	})
	return idx, err
}
