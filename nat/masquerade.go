package nat

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// NetworkMasquerade describes the masquerade rule set of one network:
// traffic from its subnets to anywhere else leaves with the node's address.
// The rule set is one chain per network and family plus one jump from the
// nat postrouting hook per subnet, so its size does not depend on how many
// pods the network has. In iptables (see IPTables):
//
//	-A POSTROUTING -s 10.200.0.0/24 -m comment --comment "podnet masquerade: net" -j PODNET-MASQ-XXXX
//	-A PODNET-MASQ-XXXX -d 224.0.0.0/4 -j RETURN
//	-A PODNET-MASQ-XXXX -d 10.200.0.0/16 -j RETURN
//	-A PODNET-MASQ-XXXX ! -d 10.200.0.0/24 -j MASQUERADE
//
// and the same rules in native nftables (see Nftables).
//
// Multicast (224.0.0.0/4, ff00::/8) is never masqueraded so pods can use it
// on the local network, nor are the Exempt destinations (10.200.0.0/16
// above): what a node agent exempts as ip-masq-agent's nonMasqueradeCIDRs
// or flannel's cluster network, one RETURN rule each in the order given.
type NetworkMasquerade struct {
	Network     string         // network name; required, names the chain
	Subnets     []netip.Prefix // pod subnets; IPv4 and IPv6 may be mixed
	Exempt      []netip.Prefix // destinations never masqueraded; IPv4 and IPv6 may be mixed
	Prefix      string         // chain (and nftables table) name prefix; "" means DefaultPrefix
	RandomFully bool           // MASQUERADE --random-fully (nftables: masquerade fully-random)
}

// Ensure makes the network's masquerade rules present in b and exactly as
// specified; it writes nothing when they already are. Bad input (and a
// Backend without its iptables backend or namespace) fails with an error
// matching ErrInvalid before anything is read or written.
//
// Equivalent to, with IPTables:
//
//	iptables -t nat -N CHAIN; iptables -t nat -A CHAIN ...
//	iptables -t nat -C POSTROUTING ... || iptables -t nat -A POSTROUTING ...
//
// with Nftables:
//
//	nft add table ip podnet-masquerade; nft add chain ip podnet-masquerade postrouting ...
//	nft flush chain ip podnet-masquerade net-XXXX; nft add rule ip podnet-masquerade net-XXXX ...
func (m NetworkMasquerade) Ensure(ctx context.Context, b Backend) error {
	if err := m.validate(b); err != nil {
		return err
	}
	return b.ensure(ctx, m)
}

// Check verifies the network's rule set in b and returns an error matching
// ErrNotFound when it is missing or not as specified; with IPTables the
// error names the first rule missing or different.
//
// Equivalent to, with IPTables: iptables -t nat -S CHAIN; iptables -t nat -C POSTROUTING ...
// with Nftables: nft list chain ip podnet-masquerade net-XXXX; nft list chain ip podnet-masquerade postrouting
func (m NetworkMasquerade) Check(ctx context.Context, b Backend) error {
	if err := m.validate(b); err != nil {
		return err
	}
	return b.check(ctx, m)
}

// Delete removes the network's chain and every rule jumping to it from b,
// in both families; it succeeds when they are already gone. Only Network
// and Prefix are used; other networks' rules stay.
//
// Equivalent to, with IPTables:
//
//	iptables -t nat -D POSTROUTING ... -j CHAIN; iptables -t nat -F CHAIN; iptables -t nat -X CHAIN
//
// with Nftables:
//
//	nft delete rule ip podnet-masquerade postrouting handle H; nft delete chain ip podnet-masquerade net-XXXX
func (m NetworkMasquerade) Delete(ctx context.Context, b Backend) error {
	if err := m.validateName(b); err != nil {
		return err
	}
	return b.delete(ctx, m)
}

// validateName checks what Delete uses: the backend, Network and Prefix.
func (m NetworkMasquerade) validateName(b Backend) error {
	if b == nil {
		return podnet.Invalid("masquerade %q: no backend", m.Network)
	}
	if err := b.usable(); err != nil {
		return fmt.Errorf("masquerade %q: %w", m.Network, err)
	}
	if m.Network == "" {
		return podnet.Invalid("masquerade: network name is empty")
	}
	if err := validatePrefix(m.Prefix); err != nil {
		return fmt.Errorf("masquerade %q: %w", m.Network, err)
	}
	return nil
}

// validate checks the whole specification and the backend.
func (m NetworkMasquerade) validate(b Backend) error {
	if err := m.validateName(b); err != nil {
		return err
	}
	if len(m.Subnets) == 0 {
		return podnet.Invalid("masquerade %q: no subnets", m.Network)
	}
	for _, s := range m.Subnets {
		if !s.IsValid() {
			return podnet.Invalid("masquerade %q: invalid subnet", m.Network)
		}
	}
	for _, e := range m.Exempt {
		switch {
		case !e.IsValid():
			return podnet.Invalid("masquerade %q: invalid exempt destination", m.Network)
		case e.Bits() == 0:
			// iptables drops "-d 0.0.0.0/0"; exempting everything is no
			// masquerade at all: Delete the rule set instead.
			return podnet.Invalid("masquerade %q: exempt destination %s is every address", m.Network, e)
		}
	}
	return nil
}

// families returns the families of the subnets, IPv4 first.
func (m NetworkMasquerade) families() []iptables.Family {
	var fs []iptables.Family
	for _, s := range m.Subnets {
		if f := iptables.FamilyOf(s.Addr()); !slices.Contains(fs, f) {
			fs = append(fs, f)
		}
	}
	slices.Sort(fs)
	return fs
}
