package main

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// outside joins a new namespace to the node as the "internet":
// node 10.240.0.20/24 on ens0, outside 10.240.0.99/24, with a route back to
// the pod network through the node (so unmasqueraded replies can return).
func outside(t *testing.T, n *node) *netns.NS {
	t.Helper()
	out := nstest.New(t)
	if _, err := veth.Create(n.ns, veth.Spec{Name: "ens0", PeerName: "eth0", PeerNS: out}); err != nil {
		t.Fatal(err)
	}
	if err := addr.Ensure(n.ns, "ens0", netip.MustParsePrefix("10.240.0.20/24")); err != nil {
		t.Fatal(err)
	}
	if err := addr.Ensure(out, "eth0", netip.MustParsePrefix("10.240.0.99/24")); err != nil {
		t.Fatal(err)
	}
	r := route.Route{Dst: netip.MustParsePrefix("10.200.0.0/16"), Gateway: netip.MustParseAddr("10.240.0.20")}
	if err := route.Create(out, r); err != nil {
		t.Fatal(err)
	}
	return out
}

// output runs a command inside ns and returns its standard output.
func output(t *testing.T, ns *netns.NS, name string, args ...string) string {
	t.Helper()
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = exec.Command(name, args...).Output()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func natRules(t *testing.T, ns *netns.NS) string { return output(t, ns, "iptables-save", "-t", "nat") }

func countRules(save string) int {
	n := 0
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A ") {
			n++
		}
	}
	return n
}

// TestMasquerade is the masquerade experiment: with ipMasq a server outside
// sees the node's address, without it the pod's; and the rule count does
// not grow with pods.
func TestMasquerade(t *testing.T) {
	for _, masq := range []bool{true, false} {
		n := newNode(t)
		out := outside(t, n)
		srv, err := probe.Serve(out, netip.MustParseAddrPort("10.240.0.99:8080"), "outside")
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		conf := n.conf("1.0.0", map[string]any{"ipMasq": masq})
		var rules []int
		for i := range 3 {
			pod := nstest.New(t)
			res := mustAdd(t, n, conf, pod, "m"+string(rune('a'+i)))
			ip := podIP(t, res)
			r, err := probe.Ask(pod, "tcp", srv.Addr, 3*time.Second)
			if err != nil {
				t.Fatalf("ipMasq=%v: pod → outside: %v", masq, err)
			}
			want := ip
			if masq {
				want = netip.MustParseAddr("10.240.0.20")
			}
			if r.Source.Addr() != want {
				t.Errorf("ipMasq=%v: outside saw %v, want %v", masq, r.Source.Addr(), want)
			}
			rules = append(rules, countRules(natRules(t, n.ns)))
		}
		if rules[0] != rules[2] {
			t.Errorf("ipMasq=%v: nat rules grew with pods: %v", masq, rules)
		}
		if masq && rules[0] == 0 {
			t.Error("no masquerade rules")
		}
	}
}

// TestMigrationFromReference runs the reference bridge + host-local on a
// node, then switches the same configuration to podnet-bridge: new pods get
// free addresses, DEL of the old pods releases their leases and removes the
// reference's per-container chains.
func TestMigrationFromReference(t *testing.T) {
	n := newNode(t)
	ref := n.conf("1.0.0", map[string]any{"type": "bridge", "ipMasq": true})
	ours := n.conf("1.0.0", map[string]any{"ipMasq": true})
	var oldRT []*libcni.RuntimeConf
	seen := map[netip.Addr]bool{}
	for i := range 3 {
		pod := nstest.New(t)
		rt := runtimeConf(pod, "old"+string(rune('a'+i)))
		res, err := n.add(ref, rt)
		if err != nil {
			t.Fatalf("reference ADD: %v", err)
		}
		seen[podIP(t, res)] = true
		oldRT = append(oldRT, rt)
	}
	if !strings.Contains(natRules(t, n.ns), "CNI-") {
		t.Fatal("the reference plugin made no per-container chain")
	}
	for i := range 3 {
		pod := nstest.New(t)
		res := mustAdd(t, n, ours, pod, "new"+string(rune('a'+i)))
		ip := podIP(t, res)
		if seen[ip] {
			t.Fatalf("podnet-bridge handed out %v, still held by a reference pod", ip)
		}
		seen[ip] = true
		if err := n.check(ours, runtimeConf(pod, "new"+string(rune('a'+i)))); err != nil {
			t.Errorf("CHECK: %v", err)
		}
	}
	for _, rt := range oldRT {
		if err := n.del(ours, rt); err != nil {
			t.Fatalf("DEL of a reference pod with podnet-bridge: %v", err)
		}
	}
	if save := natRules(t, n.ns); strings.Contains(save, "CNI-") {
		t.Errorf("reference chains left after DEL:\n%s", save)
	}
	if got := len(n.leases("bridge")); got != 3 {
		t.Errorf("%d leases, want the 3 podnet pods'", got)
	}
}

// TestMasqueradeRepaired flushes the nat table behind the plugin's back:
// CHECK notices, and the next ADD puts the rules back.
func TestMasqueradeRepaired(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.0.0", map[string]any{"ipMasq": true})
	pod := nstest.New(t)
	mustAdd(t, n, conf, pod, "r1")
	before := natRules(t, n.ns)
	if err := n.ns.Do(func() error {
		if err := exec.Command("iptables", "-w", "-t", "nat", "-F").Run(); err != nil {
			return err
		}
		return exec.Command("iptables", "-w", "-t", "nat", "-X").Run()
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.check(conf, runtimeConf(pod, "r1")); err == nil || !strings.Contains(err.Error(), "masquerade") {
		t.Fatalf("CHECK after flush: %v, want a masquerade error", err)
	}
	mustAdd(t, n, conf, nstest.New(t), "r2")
	if after := natRules(t, n.ns); countRules(after) != countRules(before) {
		t.Fatalf("rules not restored:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := n.check(conf, runtimeConf(pod, "r1")); err != nil {
		t.Fatalf("CHECK after repair: %v", err)
	}
}

func nftRuleset(t *testing.T, ns *netns.NS) string { return output(t, ns, "nft", "list", "ruleset") }

// TestMasqueradeNftables: with ipMasqBackend "nftables" the network's
// masquerade lives in the podnet-masquerade table, one rule set whatever
// the number of pods, with no iptables rule; a server outside sees the
// node's address; CHECK sees the table deleted by hand and the next ADD
// puts it back.
func TestMasqueradeNftables(t *testing.T) {
	n := newNode(t)
	out := outside(t, n)
	srv, err := probe.Serve(out, netip.MustParseAddrPort("10.240.0.99:8080"), "outside")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	conf := n.conf("1.0.0", map[string]any{"ipMasq": true, "ipMasqBackend": "nftables"})
	var sizes []int
	var first *netns.NS
	for i := range 3 {
		pod := nstest.New(t)
		if i == 0 {
			first = pod
		}
		mustAdd(t, n, conf, pod, "n"+string(rune('a'+i)))
		r, err := probe.Ask(pod, "tcp", srv.Addr, 3*time.Second)
		if err != nil {
			t.Fatalf("pod → outside: %v", err)
		}
		if r.Source.Addr() != netip.MustParseAddr("10.240.0.20") {
			t.Errorf("outside saw %v, want the node's 10.240.0.20", r.Source.Addr())
		}
		sizes = append(sizes, strings.Count(nftRuleset(t, n.ns), "\n"))
	}
	rules := nftRuleset(t, n.ns)
	for _, want := range []string{"table ip podnet-masquerade", "type nat hook postrouting priority srcnat", "ip saddr 10.200.0.0/24 jump net-", "ip daddr != 10.200.0.0/24 masquerade", "ip daddr 224.0.0.0/4 return"} {
		if !strings.Contains(rules, want) {
			t.Errorf("no %q in\n%s", want, rules)
		}
	}
	if sizes[0] != sizes[2] {
		t.Errorf("the ruleset grew with pods: %v lines", sizes)
	}
	if c := countRules(natRules(t, n.ns)); c != 0 {
		t.Errorf("%d iptables nat rules with the nftables backend", c)
	}
	if err := n.check(conf, runtimeConf(first, "na")); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := n.ns.Do(func() error { return exec.Command("nft", "delete", "table", "ip", "podnet-masquerade").Run() }); err != nil {
		t.Fatal(err)
	}
	if err := n.check(conf, runtimeConf(first, "na")); err == nil || !strings.Contains(err.Error(), "masquerade") {
		t.Fatalf("CHECK after the table was deleted: %v, want a masquerade error", err)
	}
	mustAdd(t, n, conf, nstest.New(t), "nd")
	if got := nftRuleset(t, n.ns); !strings.Contains(got, "ip daddr != 10.200.0.0/24 masquerade") {
		t.Fatalf("not repaired:\n%s", got)
	}
	if err := n.check(conf, runtimeConf(first, "na")); err != nil {
		t.Fatalf("CHECK after repair: %v", err)
	}
}

// TestMigrationFromReferenceNftables: the reference bridge plugin with
// ipMasqBackend "nftables" writes one rule per container into
// inet cni_plugins_masquerade; DEL of those pods through podnet-bridge
// removes each pod's rule, and GC removes the rule of a container that is
// no longer a valid attachment.
func TestMigrationFromReferenceNftables(t *testing.T) {
	n := newNode(t)
	ref := n.conf("1.0.0", map[string]any{"type": "bridge", "ipMasq": true, "ipMasqBackend": "nftables"})
	ours := n.conf("1.0.0", map[string]any{"ipMasq": true, "ipMasqBackend": "nftables"})
	var oldRT []*libcni.RuntimeConf
	for i := range 3 {
		rt := runtimeConf(nstest.New(t), "ref"+string(rune('a'+i)))
		if _, err := n.add(ref, rt); err != nil {
			t.Fatalf("reference ADD: %v", err)
		}
		oldRT = append(oldRT, rt)
	}
	perPod := func() int {
		return strings.Count(output(t, n.ns, "nft", "list", "chain", "inet", "cni_plugins_masquerade", "masq_checks"), " masquerade comment ")
	}
	if got := perPod(); got != 3 {
		t.Fatalf("the reference plugin made %d per-container nftables rules, want 3:\n%s", got, nftRuleset(t, n.ns))
	}
	for _, rt := range oldRT[:2] {
		if err := n.del(ours, rt); err != nil {
			t.Fatalf("DEL of a reference pod with podnet-bridge: %v", err)
		}
	}
	if got := perPod(); got != 1 {
		t.Errorf("after two DELs, %d reference rules, want 1:\n%s", got, nftRuleset(t, n.ns))
	}
	rules, err := findRefNftRules(n.ns, "bridge")
	if err != nil || len(rules) != 1 || rules[0].ContainerID != oldRT[2].ContainerID || rules[0].IfName != "eth0" {
		t.Errorf("findRefNftRules: %+v %v", rules, err)
	}
	// GC with another valid attachment removes the last one.
	err = n.in(func(ctx context.Context) error {
		return n.cni.GCNetworkList(ctx, n.confList(ours), &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := perPod(); got != 0 {
		t.Errorf("after GC, %d reference rules left:\n%s", got, nftRuleset(t, n.ns))
	}
}
