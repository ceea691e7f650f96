package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// MaxChainName is the longest chain name iptables accepts.
const MaxChainName = 28

// Owner tells whether a user chain belongs to a component. A component
// writes only the chains it owns, and Transaction.Prune removes the owned
// chains a transaction does not declare; built-in chains are never owned.
type Owner func(chain string) bool

// PrefixOwner owns the chains named prefix + "-" + anything: the one naming
// convention of podnet's components (PODNET-MASQ-…, PODNET-SVC-…).
func PrefixOwner(prefix string) Owner {
	p := prefix + "-"
	return func(chain string) bool { return prefix != "" && strings.HasPrefix(chain, p) }
}

// ChainHash returns n characters (8 to 52) of the base32 SHA-256 of s:
// the stable, name-safe suffix kube-proxy gives its per-object chains
// (KUBE-SVC-ERIFXISQEP7F7OF4 is "KUBE-SVC-" + ChainHash(port+protocol, 16)).
func ChainHash(s string, n int) string {
	h := sha256.Sum256([]byte(s))
	e := base32.StdEncoding.EncodeToString(h[:])
	return e[:min(max(n, 8), len(e))]
}
