package conntrack

import (
	"context"
	"errors"
	"syscall"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrInvalid  = podnet.ErrInvalid
)

// dial opens a conntrack socket in ns that is closed when ctx is done;
// release closes it and stops watching ctx.
func dial(ctx context.Context, ns *netns.NS) (c *ct.Conn, release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	c, err = ct.Dial(&netlink.Config{NetNS: ns.DialFd()})
	if err != nil {
		return nil, nil, &podnet.OpError{Op: "open", Kind: "conntrack socket", NetNS: ns.String(), Err: err}
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() {
		if stop() {
			c.Close()
		}
	}, nil
}

// ctxErr prefers the context's error: a request failed because ctx closed
// its socket.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// List returns the flows of ns that match selects (every flow when match
// is nil), from one dump of the table.
//
// Equivalent to: conntrack -L [-p PROTO] [-s ADDR] [-d ADDR] [-r ADDR] [-q ADDR] [--dport PORT]
func List(ctx context.Context, ns *netns.NS, match func(Flow) bool) ([]Flow, error) {
	c, release, err := dial(ctx, ns)
	if err != nil {
		return nil, err
	}
	defer release()
	return list(ctx, ns, c, match)
}

func list(ctx context.Context, ns *netns.NS, c *ct.Conn, match func(Flow) bool) ([]Flow, error) {
	raw, err := c.Dump(nil)
	if err != nil {
		return nil, &podnet.OpError{Op: "list", Kind: "conntrack flows", NetNS: ns.String(), Err: ctxErr(ctx, err)}
	}
	var out []Flow
	for _, r := range raw {
		if fl := flowOf(r); match == nil || match(fl) {
			out = append(out, fl)
		}
	}
	return out, nil
}

// Delete deletes the flows of ns that match selects and returns how many
// it deleted; flows that vanish meanwhile are not errors. It dumps the
// table once and deletes over the same socket. The next packet of a
// deleted flow is treated as new and goes through the NAT rules as they
// are now.
//
// Equivalent to: conntrack -D [-p PROTO] [-s ADDR] [-d ADDR] [-r ADDR] [-q ADDR] [--dport PORT]
func Delete(ctx context.Context, ns *netns.NS, match func(Flow) bool) (int, error) {
	if match == nil {
		return 0, podnet.Invalid("delete conntrack flows: no predicate (use Flush to delete every flow)")
	}
	c, release, err := dial(ctx, ns)
	if err != nil {
		return 0, err
	}
	defer release()
	flows, err := list(ctx, ns, c, match)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range flows {
		if err := c.Delete(f.raw); err != nil {
			if errors.Is(err, syscall.ENOENT) && ctx.Err() == nil {
				continue
			}
			return n, &podnet.OpError{Op: "delete", Kind: "conntrack flow", Name: f.String(), NetNS: ns.String(), Err: ctxErr(ctx, err)}
		}
		n++
	}
	return n, nil
}

// Flush deletes every flow of ns.
//
// Equivalent to: conntrack -F
func Flush(ctx context.Context, ns *netns.NS) error {
	c, release, err := dial(ctx, ns)
	if err != nil {
		return err
	}
	defer release()
	if err := c.Flush(); err != nil {
		return &podnet.OpError{Op: "flush", Kind: "conntrack table", NetNS: ns.String(), Err: ctxErr(ctx, err)}
	}
	return nil
}
