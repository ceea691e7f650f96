package podnet

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors shared by every podnet package. Each package re-exports the
// ones it returns (bridge.ErrNotFound is podnet.ErrNotFound), so callers may
// test with whichever name reads best:
//
//	if errors.Is(err, bridge.ErrNotFound) { ... }
var (
	// ErrNotFound: the object (link, namespace, route, lease …) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExist: a Create call found the object already present.
	ErrExist = errors.New("already exists")
	// ErrConflict: an object of that name exists but is of another kind or
	// has settings the caller did not allow podnet to change.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the input was rejected before any state was changed.
	ErrInvalid = errors.New("invalid argument")
	// ErrExhausted: an address range or similar pool has no free entry.
	ErrExhausted = errors.New("exhausted")
	// ErrNotSupported: the kernel or the configuration lacks a feature.
	ErrNotSupported = errors.New("not supported")
)

// OpError describes a failed operation on a named kernel object. Inspect Err
// with errors.Is; OpError unwraps to it.
//
// Its message reads like
//
//	create veth "veth1a2b3c4d" in netns "/var/run/netns/node0": already exists
type OpError struct {
	Op    string // verb phrase: "create", "attach to bridge \"cnio0\"" …
	Kind  string // object kind: "veth", "bridge", "route", "netns" …
	Name  string // object name; may be empty
	NetNS string // the namespace's path or description; may be empty
	Err   error
}

func (e *OpError) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Kind != "" {
		b.WriteByte(' ')
		b.WriteString(e.Kind)
	}
	if e.Name != "" {
		fmt.Fprintf(&b, " %q", e.Name)
	}
	if e.NetNS != "" {
		fmt.Fprintf(&b, " in netns %q", e.NetNS)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *OpError) Unwrap() error { return e.Err }

// Invalid returns an error that matches ErrInvalid and explains which input
// was rejected, e.g. Invalid("interface name %q: longer than 15 bytes", n).
func Invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
