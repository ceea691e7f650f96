package cnisock

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"

	"github.com/podnet/podnet"
)

// Send sends r to the agent listening at path and waits for its reply
// until ctx ends. It returns nil when the agent accepted r, an *Error
// when it refused it, and an error matching ErrUnavailable when no agent
// answered: no socket at path, nobody listening (both at once), or no
// reply before ctx ended. A request that does not validate is not sent.
func Send(ctx context.Context, path string, r Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	fail := func(err error) error {
		return &podnet.OpError{Op: "send " + string(r.Op) + " request to", Kind: "network policy agent socket", Name: path,
			Err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // unblocks the read
	defer stop()
	b, err := json.Marshal(r)
	if err != nil {
		return fail(err)
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return fail(ctxOr(ctx, err))
	}
	var reply Reply
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(c, MaxMessage))).Decode(&reply); err != nil {
		return fail(ctxOr(ctx, fmt.Errorf("read the reply: %w", err)))
	}
	switch {
	case reply.Version != Version:
		return &Error{Code: Invalid, Message: fmt.Sprintf("reply of protocol version %d, this side speaks %d", reply.Version, Version)}
	case reply.Code != "":
		return &Error{Code: reply.Code, Message: reply.Message}
	}
	return nil
}

// ctxOr returns ctx's error when it ended (which closed the connection
// and so caused err), else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}
