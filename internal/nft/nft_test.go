package nft_test

import (
	"encoding/binary"
	"fmt"
	"os/exec"
	"slices"
	"strings"
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

// TestRulesDecoded: what Rules reads of iptables-nft rules (negations,
// masks, goto, target structs) and of a native nft rule (its comment in
// the user data), written from the rules' meaning.
func TestRulesDecoded(t *testing.T) {
	ns := nstest.New(t)
	iptables(t, ns, "iptables", "-t", "nat", "-N", "PODNET-Y")
	iptables(t, ns, "iptables", "-t", "nat", "-N", "PODNET-Z")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "PODNET-Y", "!", "-d", "10.0.0.0/25", "-j", "MASQUERADE", "--random-fully")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "PODNET-Y", "-d", "224.0.0.0/4", "-j", "RETURN")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "PODNET-Y", "-s", "10.1.0.0/16", "-g", "PODNET-Z")
	iptables(t, ns, "iptables", "-t", "nat", "-A", "PODNET-Y", "-j", "MASQUERADE")
	iptables(t, ns, "ip6tables", "-t", "nat", "-N", "PODNET-Y")
	iptables(t, ns, "ip6tables", "-t", "nat", "-A", "PODNET-Y", "-s", "fd00::/64", "-j", "MASQUERADE", "--random-fully")
	err := ns.Do(func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader("table ip own {\n chain d {\n }\n chain c {\n  ip saddr 10.9.0.0/16 counter jump d comment \"native one\"\n }\n}\n")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft: %v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := nft.Dial(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const randomFully = 1 << 4 // NF_NAT_RANGE_PROTO_RANDOM_FULLY
	flags := func(info []byte, off int) uint32 {
		if len(info) < off+4 {
			return 1 << 31
		}
		return binary.NativeEndian.Uint32(info[off:])
	}
	v4, err := c.Rules(4, "nat", "PODNET-Y")
	if err != nil || len(v4) != 4 {
		t.Fatalf("Rules(PODNET-Y) = %+v, %v; want 4 rules", v4, err)
	}
	cmp := func(not bool, value, mask []byte) []nft.Cmp { return []nft.Cmp{{Not: not, Value: value, Mask: mask}} }
	for i, want := range []nft.Rule{
		{Cmps: cmp(true, []byte{10, 0, 0, 0}, []byte{255, 255, 255, 128}), Target: "MASQUERADE"},
		{Cmps: cmp(false, []byte{224, 0, 0, 0}, []byte{240, 0, 0, 0})},
		{Cmps: cmp(false, []byte{10, 1}, nil), Jump: "PODNET-Z"},
		{Target: "MASQUERADE"},
	} {
		got := v4[i]
		if got.Comment != "" || got.Jump != want.Jump || got.Target != want.Target || !slices.EqualFunc(got.Cmps, want.Cmps, equalCmp) {
			t.Errorf("rule %d: %+v; want %+v", i, got, want)
		}
	}
	// nf_nat_ipv4_multi_range_compat: rangesize, then the range's flags.
	if f0, f3 := flags(v4[0].TargetInfo, 4), flags(v4[3].TargetInfo, 4); f0&randomFully == 0 || f3&randomFully != 0 {
		t.Errorf("IPv4 MASQUERADE flags: %#x with --random-fully, %#x without", f0, f3)
	}
	// nf_nat_range: flags first.
	v6, err := c.Rules(6, "nat", "PODNET-Y")
	if err != nil || len(v6) != 1 || v6[0].Target != "MASQUERADE" || flags(v6[0].TargetInfo, 0)&randomFully == 0 {
		t.Errorf("Rules(6, PODNET-Y) = %+v, %v; want MASQUERADE --random-fully", v6, err)
	}
	native, err := c.Rules(4, "own", "c")
	if err != nil || len(native) != 1 || native[0].Comment != "native one" || native[0].Jump != "d" {
		t.Errorf("native rule = %+v, %v; want comment \"native one\", jump d", native, err)
	}
	if ok, err := c.ChainExists(4, "own", "d"); err != nil || !ok {
		t.Errorf("ChainExists(own, d) = %v, %v", ok, err)
	}
}

func equalCmp(a, b nft.Cmp) bool {
	return a.Not == b.Not && slices.Equal(a.Value, b.Value) && slices.Equal(a.Mask, b.Mask)
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
