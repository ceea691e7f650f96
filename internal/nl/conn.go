package nl

import (
	"fmt"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"

	"github.com/podnet/podnet/netns"
)

// conn is the one hand-written NETLINK_ROUTE client; everything else goes
// through vishvananda/netlink. It carries only the three requests that
// library cannot make, each for a measured need on a CNI ADD's path
// (docs/performance.md):
//
//   - AddrsOf: a strict-checked dump of one link's addresses. AddrList
//     dumps every link's, and a node has a link per pod.
//   - Forwarding: RTM_GETNETCONF. The alternative, /proc/sys/net, costs a
//     path lookup that grows with the namespaces on the machine.
//   - PortState: a bridge port's STP state, which vishvananda/netlink
//     does not decode from IFLA_INFO_SLAVE_DATA.

// withConn runs fn with a NETLINK_ROUTE socket in ns and a receive buffer,
// and closes the socket afterwards.
func withConn(ns *netns.NS, fn func(c conn) error) error {
	fd, err := routeSocket(ns)
	if err != nil {
		return fmt.Errorf("netlink socket in netns %q: %w", ns, err)
	}
	defer unix.Close(fd)
	buf := recvBufs.Get().(*[recvBufSize]byte)
	defer recvBufs.Put(buf)
	return fn(conn{fd: fd, buf: buf[:]})
}

// routeSocket opens a NETLINK_ROUTE socket in ns. When the calling thread
// is in ns already (the usual case: the node's namespace, from an unlocked
// goroutine) it opens it right there, with the thread locked so that the
// check and the socket see the same thread; otherwise it opens it on a
// thread switched into ns by ns.Do.
func routeSocket(ns *netns.NS) (int, error) {
	open := func() (int, error) {
		return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	}
	runtime.LockOSThread()
	if inThreadNS(ns) {
		fd, err := open()
		runtime.UnlockOSThread()
		return fd, err
	}
	runtime.UnlockOSThread()
	fd := -1
	err := ns.Do(func() error {
		var err error
		fd, err = open()
		return err
	})
	return fd, err
}

// inThreadNS reports whether the calling thread is in ns.
func inThreadNS(ns *netns.NS) bool {
	var cur, want unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &cur) != nil || unix.Fstat(ns.Fd(), &want) != nil {
		return false
	}
	return cur.Dev == want.Dev && cur.Ino == want.Ino
}

// recvBufSize holds any message the kernel sends: it sizes dump replies by
// the reader's buffer, up to 32 KiB.
const recvBufSize = 32 << 10

var recvBufs = sync.Pool{New: func() any { return new([recvBufSize]byte) }}

// conn is a NETLINK_ROUTE socket used for one request at a time.
type conn struct {
	fd  int
	buf []byte
}

// request sends one request and passes each message of the reply to fn,
// until the reply ends. A dump the kernel marked inconsistent
// (NLM_F_DUMP_INTR) gives netlink.ErrDumpInterrupted, after reading it to
// its end so that the socket can be reused.
func (c conn) request(typ, flags int, fn func(syscall.NetlinkMessage) error, data ...vnl.NetlinkRequestData) error {
	req := vnl.NewNetlinkRequest(typ, flags)
	for _, d := range data {
		req.AddData(d)
	}
	if err := unix.Sendto(c.fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	var fnErr error
	intr := false
	for {
		n, _, rflags, from, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return fmt.Errorf("netlink reply larger than %d bytes", len(c.buf))
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				// Both may carry a negative errno: NLMSG_ERROR always
				// (0 is an ACK), NLMSG_DONE when a dump failed.
				if len(m.Data) >= 4 {
					if errno := int32(vnl.NativeEndian().Uint32(m.Data)); errno < 0 {
						return syscall.Errno(-errno)
					}
				}
				return done(fnErr, intr)
			}
			if fnErr == nil {
				fnErr = fn(m)
			}
			if m.Header.Flags&unix.NLM_F_MULTI == 0 {
				return done(fnErr, intr)
			}
		}
	}
}

func done(fnErr error, intr bool) error {
	if fnErr == nil && intr {
		return netlink.ErrDumpInterrupted
	}
	return fnErr
}

// attr returns the value of the first attribute of type typ (nested or
// not), or nil.
func attr(attrs []syscall.NetlinkRouteAttr, typ uint16) []byte {
	for _, a := range attrs {
		if a.Attr.Type&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == typ {
			return a.Value
		}
	}
	return nil
}
