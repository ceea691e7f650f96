package nat

import (
	"strings"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrInvalid  = podnet.ErrInvalid
)

// DefaultPrefix starts the names of the chains this package's rule sets
// own: PODNET-MASQ-…, PODNET-HOSTPORTS. A prefix is one word; the rule set
// adds "-" and its role, so iptables.PrefixOwner(prefix) claims its chains.
const DefaultPrefix = "PODNET"

func prefixOr(p string) string {
	if p == "" {
		return DefaultPrefix
	}
	return p
}

// validatePrefix accepts "" (DefaultPrefix) or a word of at most 12 bytes
// without '-' that is valid in a chain name.
func validatePrefix(p string) error {
	switch {
	case p == "":
		return nil
	case len(p) > 12:
		return podnet.Invalid("chain prefix %q: longer than 12 bytes", p)
	case strings.Contains(p, "-"):
		return podnet.Invalid("chain prefix %q: contains '-'", p)
	}
	return iptables.ValidateChainName(p)
}
