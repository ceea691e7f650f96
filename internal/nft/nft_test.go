package nft_test

import (
	"os/exec"
	"slices"
	"testing"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func iptables(t *testing.T, ns *netns.NS, bin string, args ...string) {
	t.Helper()
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = exec.Command(bin, append([]string{"-w"}, args...)...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s %v: %v: %s", bin, args, err, out)
	}
}

func TestChainsAndComments(t *testing.T) {
	ns := nstest.New(t)
	c, err := nft.Dial(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Nothing yet: not even the nat table.
	if ok, err := c.ChainExists(4, "nat", "PODNET-X"); err != nil || ok {
		t.Fatalf("empty namespace: exists=%v err=%v", ok, err)
	}
	iptables(t, ns, "iptables", "-t", "nat", "-N", "PODNET-X")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "PODNET-X", "-s", "10.200.0.0/24", "-m", "comment", "--comment", "podnet: one", "-j", "RETURN")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "PODNET-X", "-j", "MASQUERADE")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "jump two", "-j", "PODNET-X")
	iptables(t, ns, "ip6tables", "-t", "nat", "-N", "PODNET-6")

	for _, tc := range []struct {
		family podnet.Family
		chain  string
		want   bool
	}{{4, "PODNET-X", true}, {4, "POSTROUTING", true}, {4, "PODNET-Y", false}, {6, "PODNET-6", true}, {6, "PODNET-X", false}} {
		ok, err := c.ChainExists(tc.family, "nat", tc.chain)
		if err != nil || ok != tc.want {
			t.Errorf("ChainExists(%v, %s) = %v, %v; want %v", tc.family, tc.chain, ok, err, tc.want)
		}
	}
	got, err := c.Rules(4, "nat", "PODNET-X")
	if err != nil || !slices.Equal(brief(got), []commentJump{{Comment: "podnet: one"}, {}}) {
		t.Errorf("Rules(PODNET-X) = %+v, %v", got, err)
	}
	// -s 10.200.0.0/24 is a comparison of the source's first three bytes.
	if len(got) == 2 && (len(got[0].Cmps) != 1 || got[0].Cmps[0].Not || !slices.Equal(got[0].Cmps[0].Value, []byte{10, 200, 0})) {
		t.Errorf("Rules(PODNET-X)[0].Cmps = %+v, want one 0a c8 00", got[0].Cmps)
	}
	if len(got) == 2 && (got[1].Target != "MASQUERADE" || len(got[1].TargetInfo) == 0) {
		t.Errorf("Rules(PODNET-X)[1] target %q info %x, want MASQUERADE", got[1].Target, got[1].TargetInfo)
	}
	got, err = c.Rules(4, "nat", "POSTROUTING")
	if err != nil || !slices.Equal(brief(got), []commentJump{{Comment: "jump two", Jump: "PODNET-X"}}) {
		t.Errorf("Rules(POSTROUTING) = %+v, %v", got, err)
	}
	if got, err := c.Rules(4, "nat", "NOPE"); err != nil || len(got) != 0 {
		t.Errorf("Rules(missing) = %+v, %v", got, err)
	}
}

func BenchmarkChainExists(b *testing.B) {
	ns := nstest.New(b)
	c, err := nft.Dial(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for b.Loop() {
		c.ChainExists(4, "nat", "POSTROUTING")
	}
}

type commentJump struct{ Comment, Jump string }

// brief keeps the comment and jump of each rule.
func brief(rules []nft.Rule) []commentJump {
	var out []commentJump
	for _, r := range rules {
		out = append(out, commentJump{r.Comment, r.Jump})
	}
	return out
}
