package cnisock

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/podnet/podnet"
)

// Version is the protocol version this package speaks.
const Version = 1

// DefaultPath is the socket podnet-agent's DaemonSet serves
// (--policy-socket), in the node's /run/podnet.
const DefaultPath = "/run/podnet/policy.sock"

// MaxMessage bounds a request or reply on the wire.
const MaxMessage = 64 << 10

// Re-exported sentinels; see package podnet.
var (
	ErrInvalid  = podnet.ErrInvalid
	ErrNotFound = podnet.ErrNotFound
)

// ErrUnavailable: no agent answered (no socket, nobody listening, or no
// reply before the context ended).
var ErrUnavailable = errors.New("no network policy agent answered")

// Op is what a request asks.
type Op string

// The operations.
const (
	// Add: the sandbox ContainerID of the pod has IPs; reply once the
	// pod's policies hold for them.
	Add Op = "add"
	// Del: the sandbox is gone; forget its addresses. Best effort: the
	// agent also forgets them when the pod is deleted.
	Del Op = "del"
)

// Request is one message from the plugin.
type Request struct {
	Version     int    `json:"version"`     // Version
	Op          Op     `json:"op"`          // Add or Del
	ContainerID string `json:"containerID"` // the sandbox (CNI_CONTAINERID)
	// Namespace and Name identify the pod (CNI_ARGS K8S_POD_NAMESPACE,
	// K8S_POD_NAME); UID, if known (K8S_POD_UID), its incarnation.
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	UID       string       `json:"uid,omitempty"`
	IPs       []netip.Addr `json:"ips,omitempty"` // Add: one or two, at most one per family
}

// Validate reports the first problem with r as an error matching
// ErrInvalid.
func (r *Request) Validate() error {
	bad := func(format string, a ...any) error {
		return podnet.Invalid("network policy agent request for pod %s/%s: %s", r.Namespace, r.Name, fmt.Sprintf(format, a...))
	}
	switch {
	case r.Version != Version:
		return bad("protocol version %d, this side speaks %d", r.Version, Version)
	case r.Op != Add && r.Op != Del:
		return bad("op %q: want %q or %q", r.Op, Add, Del)
	case r.ContainerID == "" || len(r.ContainerID) > 256 || !printable(r.ContainerID):
		return bad("container ID %q: want 1-256 printable characters", r.ContainerID)
	case !objectName(r.Namespace, 63) || !objectName(r.Name, 253):
		return bad("namespace and name must be Kubernetes object names")
	case len(r.UID) > 128 || !printable(r.UID):
		return bad("uid %q: want at most 128 printable characters", r.UID)
	case r.Op == Add && (len(r.IPs) == 0 || len(r.IPs) > 2):
		return bad("%d addresses: want one or two", len(r.IPs))
	}
	v4, v6 := 0, 0
	for _, a := range r.IPs {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" || a.Is4In6() {
			return bad("address %q is not a unicast address", a)
		}
		if a.Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return bad("addresses %v: at most one per family", r.IPs)
	}
	return nil
}

// objectName reports whether s can be a Kubernetes namespace or pod
// name: lowercase letters, digits, '-' and '.', at most limit bytes.
func objectName(s string, limit int) bool {
	if s == "" || len(s) > limit {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func printable(s string) bool {
	return !strings.ContainsFunc(s, func(c rune) bool { return c < 0x21 || c > 0x7e })
}

// Code says why the agent refused a request.
type Code string

// The codes of a reply; "" is success.
const (
	Invalid  Code = "invalid"   // matches ErrInvalid
	NotFound Code = "not-found" // matches ErrNotFound
	Timeout  Code = "timeout"   // matches context.DeadlineExceeded
	Failed   Code = "failed"    // anything else
)

// Reply is the agent's answer.
type Reply struct {
	Version int    `json:"version"`
	Code    Code   `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// Error is a request the agent refused. Inspect it with errors.Is:
// its Code matches ErrInvalid, ErrNotFound or context.DeadlineExceeded.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return "network policy agent: " + e.Message }

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case Invalid:
		return target == ErrInvalid
	case NotFound:
		return target == ErrNotFound
	case Timeout:
		return target == context.DeadlineExceeded
	}
	return false
}

// codeOf is the code an agent's handler error is sent with.
func codeOf(err error) Code {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrInvalid):
		return Invalid
	case errors.Is(err, ErrNotFound):
		return NotFound
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	}
	return Failed
}
