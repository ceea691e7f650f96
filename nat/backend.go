package nat

import (
	"context"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// Backend is where a NetworkMasquerade keeps its rules: in the nat table of
// iptables (IPTables) or in native nftables tables of its own (Nftables).
// A program picks one per node or network, typically from its
// configuration, and passes it to Ensure, Check and Delete. The two do not
// see each other's rules: moving a network from one to the other is Delete
// with the old Backend and Ensure with the new.
//
// Backend is implemented by this package only, so every Backend can hold
// every rule set; for unit tests without root, use IPTables over an
// iptables.Fake.
type Backend interface {
	ensure(ctx context.Context, m NetworkMasquerade) error
	check(ctx context.Context, m NetworkMasquerade) error
	delete(ctx context.Context, m NetworkMasquerade) error
	usable() error // an ErrInvalid error when the backend cannot be used
}

// IPTables returns the Backend that keeps masquerade rules in the nat table
// of b: an iptables.Kernel for a namespace's iptables (in either
// iptables.Mode), or an iptables.Fake in unit tests. Changes are applied in
// one transaction (one iptables-restore per family on a Kernel).
//
// On a Kernel whose iptables keeps its rules in nf_tables (any but one made
// for iptables.ModeLegacy), Ensure recognises a complete rule set by
// reading nf_tables over netlink, without running iptables: a CNI ADD pays
// tens of microseconds for every pod but a network's first on a node.
func IPTables(b iptables.Backend) Backend { return iptablesBackend{ipt: b} }

// Nftables returns the Backend that keeps masquerade rules in native
// nftables in ns, written over netlink in one batch per call (no nft
// binary). Every network's rules are in tables ip and ip6 named by
// NetworkMasquerade.NftTable ("podnet-masquerade"), which nothing else
// writes: a base chain "postrouting" (type nat hook postrouting priority
// srcnat) with one jump per subnet, and one chain per network
// (NetworkMasquerade.NftChain). It is what the reference bridge plugin's
// ipMasqBackend "nftables" asks for, without a rule per container.
//
// Ensure of an unchanged rule set reads the network's two chains once per
// family and writes nothing. The calls talk netlink only, in a few short
// exchanges, and do not consult their context.
func Nftables(ns *netns.NS) Backend { return nftablesBackend{ns: ns} }

type iptablesBackend struct{ ipt iptables.Backend }

func (b iptablesBackend) usable() error {
	if b.ipt == nil {
		return podnet.Invalid("iptables backend is nil")
	}
	return nil
}

type nftablesBackend struct{ ns *netns.NS }

func (b nftablesBackend) usable() error {
	if b.ns == nil {
		return podnet.Invalid("nftables backend has no network namespace")
	}
	return nil
}
