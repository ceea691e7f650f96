package main

import (
	"context"
	"net/netip"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/cni"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
)

// masquerade returns the network's rule set: one chain per family and one
// POSTROUTING jump per pod subnet, whatever the number of pods. The subnets
// are those of the IPAM ranges when the configuration lists them, so every
// pod of the network is covered; otherwise those of this pod's addresses.
func masquerade(n *netConf, ips []*current.IPConfig) nat.NetworkMasquerade {
	subnets := n.rangeSubnets()
	for _, ipc := range ips {
		if s := cni.Prefix(ipc.Address).Masked(); !slices.Contains(subnets, s) && !coveredBy(s, subnets) {
			subnets = append(subnets, s)
		}
	}
	return nat.NetworkMasquerade{Network: n.Name, Subnets: subnets}
}

func coveredBy(p netip.Prefix, subnets []netip.Prefix) bool {
	for _, s := range subnets {
		if s.Bits() <= p.Bits() && s.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// masqBackend is where the network's masquerade lives: iptables, or with
// ipMasqBackend "nftables" the podnet-masquerade nftables tables of host.
func (n *netConf) masqBackend(host *netns.NS) nat.Backend {
	if n.IPMasqBackend == "nftables" {
		return nat.Nftables(host)
	}
	return nat.IPTables(iptables.NewKernel(host))
}

// ensureMasquerade makes the network's masquerade rules present; when they
// already are (every pod but a network's first on a node), that is seen
// without running iptables or writing nftables.
func ensureMasquerade(host *netns.NS, n *netConf, ips []*current.IPConfig) error {
	return masquerade(n, ips).Ensure(context.Background(), n.masqBackend(host))
}

// checkMasquerade verifies the rule set rule for rule.
func checkMasquerade(host *netns.NS, n *netConf, ips []*current.IPConfig) error {
	return masquerade(n, ips).Check(context.Background(), n.masqBackend(host))
}
