package ipam

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/podnet/podnet"
)

// Sentinel errors returned by this package; they are the podnet ones, so
// errors.Is(err, ipam.ErrExhausted) and errors.Is(err, podnet.ErrExhausted)
// agree.
var (
	ErrNotFound  = podnet.ErrNotFound  // no lease for that owner or address
	ErrConflict  = podnet.ErrConflict  // a requested address belongs to someone else
	ErrInvalid   = podnet.ErrInvalid   // bad configuration, owner or address
	ErrExhausted = podnet.ErrExhausted // no free address (or node subnet) left
)

// FieldError reports a configuration field that failed validation. It
// matches ErrInvalid.
type FieldError struct {
	Field  string // JSON path of the field, e.g. "ranges[0][1].rangeStart"
	Value  string // the rejected value as given; may be empty
	Reason string // what is wrong, e.g. "not in subnet 10.1.0.0/24"
}

// Error returns "field \"value\": reason".
func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("%s %q: %s", e.Field, e.Value, e.Reason)
}

// Unwrap makes a FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, value, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// Limits on the strings that end up in lease files and paths.
const (
	MaxContainerIDLen = 256 // bytes
	MaxIfNameLen      = 15  // bytes, as the kernel's IFNAMSIZ-1
	MaxNetworkLen     = 255 // bytes, one path component
)

// Owner identifies an attachment: the (container ID, interface) pair that a
// lease belongs to. Leases written by very old host-local versions carry only
// the container ID; their IfName is empty and they match any interface.
type Owner struct {
	ContainerID string
	IfName      string
}

// String returns "containerID/ifname".
func (o Owner) String() string { return o.ContainerID + "/" + o.IfName }

// Validate checks that the owner can be stored safely: a container ID of at
// most MaxContainerIDLen printable bytes without whitespace, path separators
// or "..", and an interface name that the kernel would accept.
func (o Owner) Validate() error {
	if err := validateName("container ID", o.ContainerID, MaxContainerIDLen); err != nil {
		return err
	}
	if o.IfName == "" {
		return podnet.Invalid("interface name: empty")
	}
	if err := validateName("interface name", o.IfName, MaxIfNameLen); err != nil {
		return err
	}
	if strings.ContainsRune(o.IfName, ':') {
		return podnet.Invalid("interface name %q: contains ':'", o.IfName)
	}
	return nil
}

// validateName rejects what could escape a path component or break the
// line-oriented lease file format.
func validateName(what, s string, max int) error {
	switch {
	case s == "":
		return podnet.Invalid("%s: empty", what)
	case len(s) > max:
		return podnet.Invalid("%s %.40q…: longer than %d bytes", what, s, max)
	case s == "." || strings.Contains(s, ".."):
		return podnet.Invalid("%s %q: contains \"..\" or is \".\"", what, s)
	case strings.ContainsAny(s, `/\`):
		return podnet.Invalid("%s %q: contains a path separator", what, s)
	}
	for _, r := range s {
		if r == unicode.ReplacementChar || unicode.IsControl(r) || unicode.IsSpace(r) {
			return podnet.Invalid("%s %q: contains a control, space or non-UTF-8 character", what, s)
		}
	}
	return nil
}

// ValidateNetwork checks a network name used as a directory under dataDir:
// one path component that does not start with a dot.
func ValidateNetwork(name string) error {
	if err := validateName("network name", name, MaxNetworkLen); err != nil {
		return err
	}
	if strings.HasPrefix(name, ".") {
		return podnet.Invalid("network name %q: starts with '.'", name)
	}
	return nil
}
