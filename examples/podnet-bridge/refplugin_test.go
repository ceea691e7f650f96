package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

// restore seeds rules with tool (iptables-restore, ip6tables-legacy-restore
// …) in ns, the way another program would write them.
func restore(t *testing.T, ns *netns.NS, tool, text string) {
	t.Helper()
	err := ns.Do(func() error {
		cmd := exec.Command(tool, "-w", "--noflush")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", tool, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("seed rules: %v", err)
	}
}

// refComment is the comment the reference plugin puts on a container's
// rules (its pkg/ip/ipmasq_iptables_linux.go).
func refComment(network, containerID string) string {
	return fmt.Sprintf("name: %q id: %q", network, containerID)
}

// refRule is one -A line of the reference layout, with its comment.
func refRule(chain, spec, network, cid string) string {
	return fmt.Sprintf("-A %s %s -m comment --comment %q\n", chain, spec, refComment(network, cid))
}

func chainNames(t *iptables.TableRules) []string {
	var n []string
	for _, c := range t.Chains {
		n = append(n, c.Name)
	}
	return n
}

// TestRefChainsKernel: the reference bridge plugin's layout is found and
// removed; a portmap chain and another container's chain stay.
func TestRefChainsKernel(t *testing.T) {
	ns := nstest.New(t)
	k := iptables.NewKernel(ns)
	ctx := context.Background()
	c1, c2 := refChainName("cbr", "c1"), refChainName("cbr", "c2")
	restore(t, ns, "iptables-restore", "*nat\n:"+c1+" - [0:0]\n:"+c2+" - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n"+
		refRule(c1, "-d 10.88.0.0/16 -j ACCEPT", "cbr", "c1")+refRule(c1, "! -d 224.0.0.0/4 -j MASQUERADE", "cbr", "c1")+
		refRule("POSTROUTING", "-s 10.88.0.2 -j "+c1, "cbr", "c1")+
		refRule(c2, "-d 10.88.0.0/16 -j ACCEPT", "cbr", "c2")+refRule("POSTROUTING", "-s 10.88.0.3 -j "+c2, "cbr", "c2")+
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\nCOMMIT\n")
	found, err := findRefChains(ctx, k, "cbr", "c1")
	if err != nil || len(found) != 1 || found[0].Chain.Name != c1 || len(found[0].Jumps) != 1 {
		t.Fatalf("findRefChains = %+v, %v", found, err)
	}
	if n, err := deleteRefChains(ctx, k, "cbr", "c1"); err != nil || n != 1 {
		t.Fatalf("deleteRefChains = %d, %v", n, err)
	}
	nat, _ := k.Save(ctx, iptables.IPv4, iptables.TableNAT)
	if nat.Chain(c1) != nil || nat.Chain(c2) == nil || nat.Chain("CNI-HOSTPORT-DNAT") == nil || len(nat.Chain("POSTROUTING").Rules) != 1 {
		t.Fatalf("after delete: chains %v, POSTROUTING %q", chainNames(nat), nat.Chain("POSTROUTING").Rules)
	}
	if n, err := deleteRefChains(ctx, k, "cbr", "c1"); err != nil || n != 0 {
		t.Fatalf("second deleteRefChains = %d, %v", n, err)
	}
	if n, err := deleteRefChains(ctx, k, "cbr", ""); err != nil || n != 1 {
		t.Fatalf("deleteRefChains(all) = %d, %v", n, err)
	}
}

// TestRefChainAbsent: the nf_tables view that spares DEL an iptables-save
// answers "absent" only when neither family's iptables-nft nat table has
// the container's chain, and never when the nat table is iptables-legacy's
// (which nf_tables cannot see).
func TestRefChainAbsent(t *testing.T) {
	ns := nstest.New(t)
	c1, c2 := refChainName("cbr", "c1"), refChainName("cbr", "c2")
	if !refChainAbsent(ns, c1) {
		t.Error("a namespace without nat rules: the chain is not seen absent")
	}
	restore(t, ns, "iptables-nft-restore", "*nat\n:"+c2+" - [0:0]\n"+refRule(c2, "! -d 224.0.0.0/4 -j MASQUERADE", "cbr", "c2")+"COMMIT\n")
	if !refChainAbsent(ns, c1) || refChainAbsent(ns, c2) {
		t.Errorf("with %s in ip nat: absent(c1) = %v, absent(c2) = %v, want true, false", c2, refChainAbsent(ns, c1), refChainAbsent(ns, c2))
	}
	restore(t, ns, "ip6tables-nft-restore", "*nat\n:"+c1+" - [0:0]\n"+refRule(c1, "! -d ff00::/8 -j MASQUERADE", "cbr", "c1")+"COMMIT\n")
	if refChainAbsent(ns, c1) {
		t.Errorf("%s in ip6 nat only: seen absent", c1)
	}
	legacy := nstest.New(t)
	restore(t, legacy, "iptables-legacy-restore", "*nat\nCOMMIT\n")
	if refChainAbsent(legacy, c1) {
		t.Error("nat table in iptables-legacy: seen absent, want ask iptables")
	}
}

// TestRefNftRuleOwns: a rule whose comment the reference cut short owns
// the container IDs it is a prefix of; the interface must match unless
// none is asked for.
func TestRefNftRuleOwns(t *testing.T) {
	whole := refNftRule{IfName: "eth0", ContainerID: "abc"}
	cut := refNftRule{IfName: "eth0", ContainerID: "abc", cut: true}
	for _, c := range []struct {
		r         refNftRule
		ifname    string
		container string
		want      bool
	}{
		{whole, "eth0", "abc", true},
		{whole, "", "abc", true},
		{whole, "eth1", "abc", false},
		{whole, "eth0", "abcdef", false},
		{cut, "eth0", "abcdef", true},
		{cut, "eth0", "abd", false},
		{cut, "net1", "abcdef", false},
	} {
		if got := c.r.owns(c.ifname, c.container); got != c.want {
			t.Errorf("%+v.owns(%q, %q) = %v, want %v", c.r, c.ifname, c.container, got, c.want)
		}
	}
}
