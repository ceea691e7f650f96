// Package nl is podnet's only door to vishvananda/netlink: it builds handles
// bound to a namespace, retries dumps the kernel interrupted, and turns the
// library's "not found" / "exists" errors into podnet sentinels. No podnet
// package calls netlink's package-level functions (they act on whatever
// namespace the calling thread happens to be in).
package nl

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

// Handle returns a netlink handle whose sockets live in ns. The caller must
// Close it. For the namespace the process is in the socket is opened where
// the thread is, without setns (which needs CAP_SYS_ADMIN), so a program
// acting on its own namespace needs no more than CAP_NET_ADMIN.
func Handle(ns *netns.NS) (*netlink.Handle, error) {
	// Only NETLINK_ROUTE: podnet needs no XFRM or netfilter socket here,
	// and each socket costs two setns calls to create.
	var (
		h   *netlink.Handle
		err error
	)
	if ns.DialFd() == 0 {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink socket in netns %q: %w", ns, err)
	}
	return h, nil
}

// dumpRetries bounds retries of a dump the kernel marked inconsistent
// (NLM_F_DUMP_INTR: the table changed while it was being read).
const dumpRetries = 10

// Dump runs a netlink dump, repeating it while the kernel reports it was
// interrupted by a concurrent change.
func Dump[T any](fn func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpRetries {
		v, err = fn()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// Err maps netlink errors to podnet sentinels where one applies, keeping the
// original in the chain: "link not found", ENODEV, ENOENT and ESRCH match
// podnet.ErrNotFound; EEXIST matches podnet.ErrExist.
func Err(err error) error {
	if err == nil {
		return nil
	}
	var lnf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &lnf), errors.Is(err, syscall.ENODEV), errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ESRCH):
		return &mapped{sentinel: podnet.ErrNotFound, err: err}
	case errors.Is(err, syscall.EEXIST):
		return &mapped{sentinel: podnet.ErrExist, err: err}
	}
	return err
}

// IsNotFound reports whether err means the object does not exist.
func IsNotFound(err error) bool { return errors.Is(Err(err), podnet.ErrNotFound) }

// IsExist reports whether err means the object already exists.
func IsExist(err error) bool { return errors.Is(Err(err), podnet.ErrExist) }

type mapped struct {
	sentinel error
	err      error
}

func (m *mapped) Error() string   { return m.err.Error() }
func (m *mapped) Unwrap() []error { return []error{m.sentinel, m.err} }

// Link opens a handle in ns and looks up the link called name. On success
// the caller closes the handle; on failure there is none to close, and a
// missing link gives an error matching podnet.ErrNotFound.
func Link(ns *netns.NS, name string) (*netlink.Handle, netlink.Link, error) {
	h, err := Handle(ns)
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		return nil, nil, Err(err)
	}
	return h, l, nil
}
