package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/nl"
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
		if s := nl.Prefix(&ipc.Address).Masked(); !slices.Contains(subnets, s) && !coveredBy(s, subnets) {
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

// ensureMasquerade makes the network's masquerade rules present. The common
// case — they already are — is answered from nf_tables over netlink in
// tens of microseconds; only when something is missing (the first pod of
// the network on this node, or somebody flushed the table) does it run
// iptables-restore.
func ensureMasquerade(host *netns.NS, n *netConf, ips []*current.IPConfig) error {
	m := masquerade(n, ips)
	if present(host, m) {
		return nil
	}
	return m.Ensure(context.Background(), nat.NewKernel(host))
}

// present reports whether iptables-nft holds, for every family of m, the
// network's chain with its expected number of rules and one commented
// jump per subnet from POSTROUTING. False means "run the slow path": it is
// also the answer when iptables uses the legacy backend, which nf_tables
// cannot see.
func present(host *netns.NS, m nat.NetworkMasquerade) bool {
	c, ok := nftView(host)
	if !ok {
		return false
	}
	defer c.Close()
	for _, f := range []nat.Family{nat.IPv4, nat.IPv6} {
		chain, jumps := m.Rules(f)
		if len(jumps) == 0 {
			continue
		}
		fam := familyNumber(f)
		have, err := c.Rules(fam, "nat", m.Chain())
		if err != nil || len(have) != len(chain) {
			return false
		}
		post, err := c.Rules(fam, "nat", "POSTROUTING")
		if err != nil {
			return false
		}
		found := 0
		for _, r := range post {
			if r.Jump == m.Chain() && r.Comment == "podnet masquerade: "+m.Network {
				found++
			}
		}
		if found != len(jumps) {
			return false
		}
	}
	return true
}

// checkMasquerade verifies the rule set rule for rule (CHECK is not on the
// hot path, so it reads the table back with iptables-save).
func checkMasquerade(host *netns.NS, n *netConf, ips []*current.IPConfig) error {
	m := masquerade(n, ips)
	ctx := context.Background()
	k := nat.NewKernel(host)
	for _, f := range []nat.Family{nat.IPv4, nat.IPv6} {
		chain, jumps := m.Rules(f)
		if len(jumps) == 0 {
			continue
		}
		t, err := k.Save(ctx, f, nat.TableNAT)
		if err != nil {
			return err
		}
		have := t.Chain(m.Chain())
		if have == nil || len(have.Rules) != len(chain) {
			return fmt.Errorf("check: masquerade chain %s of network %q is missing or incomplete", m.Chain(), n.Name)
		}
		for i, r := range chain {
			if s, _ := r.Spec(f); s != have.Rules[i] {
				return fmt.Errorf("check: masquerade chain %s has %q, want %q", m.Chain(), have.Rules[i], s)
			}
		}
		post := t.Chain("POSTROUTING")
		for _, j := range jumps {
			if s, _ := j.Spec(f); post == nil || !slices.Contains(post.Rules, s) {
				return fmt.Errorf("check: nat POSTROUTING lacks %q", s)
			}
		}
	}
	return nil
}

// removeLegacyMasquerade deletes the reference bridge plugin's per-container
// chain (CNI-<hash>, commented `name: "NET" id: "ID"`) of containerID, so a
// node that ran the reference plugin is cleaned up pod by pod. Whether the
// chain exists is asked of nf_tables first, so a node without such chains
// pays no exec.
func removeLegacyMasquerade(host *netns.NS, n *netConf, containerID string) error {
	if c, ok := nftView(host); ok {
		chain := nat.RefChainName(n.Name, containerID)
		v4, err4 := c.ChainExists(4, "nat", chain)
		v6, err6 := c.ChainExists(6, "nat", chain)
		c.Close()
		if err4 == nil && err6 == nil && !v4 && !v6 {
			return nil
		}
	}
	_, err := nat.DeleteRefChains(context.Background(), nat.NewKernel(host), n.Name, containerID)
	return err
}

// gcLegacyMasquerade deletes the reference plugin's per-container chains of
// this network whose container is not a valid attachment.
func gcLegacyMasquerade(host *netns.NS, n *netConf) error {
	ctx := context.Background()
	k := nat.NewKernel(host)
	chains, err := nat.FindRefChains(ctx, k, n.Name, "")
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range n.ValidAttachments {
		valid[a.ContainerID] = true
	}
	for _, rc := range chains {
		if valid[rc.ContainerID] {
			continue
		}
		if _, err := nat.DeleteRefChains(ctx, k, n.Name, rc.ContainerID); err != nil {
			return err
		}
	}
	return nil
}

// nftView opens nf_tables in host when it is where iptables keeps its
// rules: not when the legacy x_tables nat table is in use there.
func nftView(host *netns.NS) (*nft.Conn, bool) {
	legacy := false
	host.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
		legacy = err == nil && strings.Contains(string(b), "nat")
		return nil
	})
	if legacy {
		return nil, false
	}
	c, err := nft.Dial(host)
	if err != nil {
		return nil, false
	}
	return c, true
}

func familyNumber(f nat.Family) int {
	if f == nat.IPv6 {
		return 6
	}
	return 4
}
