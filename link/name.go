package link

import (
	"strings"

	"github.com/podnet/podnet"
)

// MaxNameLen is the longest interface name the kernel accepts (IFNAMSIZ-1).
const MaxNameLen = 15

// ValidateName returns an error matching podnet.ErrInvalid when the kernel would
// refuse name as an interface name, or it could be confused with a path:
// empty, longer than 15 bytes, ".", "..", or containing '/', ':', whitespace
// or a control character.
func ValidateName(name string) error {
	switch {
	case name == "":
		return podnet.Invalid("interface name is empty")
	case len(name) > MaxNameLen:
		return podnet.Invalid("interface name %q: longer than %d bytes", name, MaxNameLen)
	case name == "." || name == "..":
		return podnet.Invalid("interface name %q", name)
	case strings.ContainsAny(name, "/:"):
		return podnet.Invalid("interface name %q: contains '/' or ':'", name)
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f {
			return podnet.Invalid("interface name %q: contains whitespace or a control character", name)
		}
	}
	return nil
}
