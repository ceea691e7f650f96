package iptables

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

var (
	p4 = netip.MustParsePrefix
	a4 = netip.MustParseAddr
)

// sampleRules covers every match and target, with the text iptables-save
// prints for them (checked against iptables 1.8.9 nf_tables by
// TestKernelRoundTrip).
var sampleRules = []struct {
	f    Family
	rule Rule
	want string
}{
	{IPv4, Rule{Source: Addr{Prefix: p4("10.0.0.0/8")}, Destination: Addr{Prefix: p4("10.0.0.0/8"), Not: true}, Matches: []Match{Comment(`name: "net" id: "abc"`)}, Target: Masquerade{RandomFully: true}},
		`-s 10.0.0.0/8 ! -d 10.0.0.0/8 -m comment --comment "name: \"net\" id: \"abc\"" -j MASQUERADE --random-fully`},
	{IPv4, Rule{Destination: Addr{Prefix: p4("224.0.0.0/4")}, Matches: []Match{Comment("x y")}, Target: Return}, `-d 224.0.0.0/4 -m comment --comment "x y" -j RETURN`},
	{IPv4, Rule{Protocol: TCP, Matches: []Match{Ports{Dst: PortRange{80, 90}}, DstLocal}, Target: DNAT{To: a4("10.1.1.1"), Ports: Port(8080)}},
		`-p tcp -m tcp --dport 80:90 -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.1.1.1:8080`},
	{IPv4, Rule{Protocol: UDP, Matches: []Match{Ports{Src: Port(53), NotSrc: true}, Mark{Value: 0x4000, Mask: 0x4000}}, Target: OrMark(0x4000)},
		`-p udp -m udp ! --sport 53 -m mark --mark 0x4000/0x4000 -j MARK --set-xmark 0x4000/0x4000`},
	{IPv4, Rule{Matches: []Match{Statistic{Probability: 0.2}}, Target: Jump("PODNET-B")}, `-m statistic --mode random --probability 0.20000000019 -j PODNET-B`},
	{IPv4, Rule{Matches: []Match{Recent{Mode: RecentCheck, Name: "PODNET-B", Seconds: 10800, Reap: true}}, Target: Jump("PODNET-B")},
		`-m recent --rcheck --seconds 10800 --reap --name PODNET-B --mask 255.255.255.255 --rsource -j PODNET-B`},
	{IPv4, Rule{Matches: []Match{Recent{Mode: RecentSet, Name: "PODNET-B"}}, Target: Return}, `-m recent --set --name PODNET-B --mask 255.255.255.255 --rsource -j RETURN`},
	{IPv4, Rule{Matches: []Match{Conntrack{States: []string{"RELATED", "ESTABLISHED"}}}, Target: Accept}, `-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`},
	{IPv4, Rule{In: Iface{Name: "veth+"}, Out: Iface{Name: "cni0", Not: true}, Protocol: TCP, Target: SNAT{To: a4("1.2.3.4")}}, `-i veth+ ! -o cni0 -p tcp -j SNAT --to-source 1.2.3.4`},
	{IPv4, Rule{Matches: []Match{AddrType{Src: "LOCAL", NotSrc: true}}, Target: SetMarkTo(1)}, `-m addrtype ! --src-type LOCAL -j MARK --set-xmark 0x1/0xffffffff`},
	{IPv4, Rule{Matches: []Match{Mark{Value: 1, Not: true}}, Target: XorMark(1)}, `-m mark ! --mark 0x1 -j MARK --set-xmark 0x1/0x0`},
	{IPv4, Rule{Protocol: TCP, Target: Masquerade{ToPorts: PortRange{1000, 2000}}}, `-p tcp -j MASQUERADE --to-ports 1000-2000`},
	{IPv4, Rule{Protocol: TCP, Matches: []Match{Comment("plain")}, Target: DNAT{To: a4("10.1.1.1")}}, `-p tcp -m comment --comment plain -j DNAT --to-destination 10.1.1.1`},
	{IPv4, Rule{Protocol: SCTP, Matches: []Match{Ports{Dst: Port(5)}}, Target: DNAT{To: a4("10.0.0.1"), Ports: PortRange{5, 6}}}, `-p sctp -m sctp --dport 5 -j DNAT --to-destination 10.0.0.1:5-6`},
	{IPv4, Rule{Source: Addr{Prefix: p4("10.0.0.2/32")}, Target: Jump("PODNET-A")}, `-s 10.0.0.2/32 -j PODNET-A`},
	{IPv4, Rule{Matches: []Match{Comment("a/b")}, Target: Jump("PODNET-A")}, `-m comment --comment "a/b" -j PODNET-A`},
	{IPv6, Rule{Source: Addr{Prefix: p4("fd00::/64")}, Destination: Addr{Prefix: p4("fd00::/64"), Not: true}, Target: Masquerade{}}, `-s fd00::/64 ! -d fd00::/64 -j MASQUERADE`},
	{IPv6, Rule{Protocol: TCP, Matches: []Match{Ports{Dst: Port(80)}}, Target: DNATTo(netip.MustParseAddrPort("[fd00::1]:8080"))}, `-p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::1]:8080`},
	{IPv6, Rule{Matches: []Match{Recent{Mode: RecentCheck, Name: "PODNET-B", Seconds: 10800, Reap: true}}, Target: Return},
		`-m recent --rcheck --seconds 10800 --reap --name PODNET-B --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j RETURN`},
	{IPv6, Rule{Source: Addr{Prefix: p4("fd00::1/128")}, Protocol: ICMPv6, Target: SNAT{To: a4("fd00::9")}}, `-s fd00::1/128 -p ipv6-icmp -j SNAT --to-source fd00::9`},
}

// filterRules are valid only in the filter table.
var filterRules = []struct {
	f    Family
	rule Rule
	want string
}{
	{IPv4, Rule{Protocol: TCP, Target: Reject{}}, `-p tcp -j REJECT --reject-with icmp-port-unreachable`},
	{IPv6, Rule{Protocol: TCP, Target: Reject{}}, `-p tcp -j REJECT --reject-with icmp6-port-unreachable`},
	{IPv6, Rule{Protocol: TCP, Target: Reject{With: "tcp-reset"}}, `-p tcp -j REJECT --reject-with tcp-reset`},
	{IPv4, Rule{Matches: []Match{PhysDev{IsBridged: true}}, Target: Drop}, `-m physdev --physdev-is-bridged -j DROP`},
	{IPv4, Rule{Target: Goto("PODNET-F2")}, `-g PODNET-F2`},
}

func TestRenderAndParse(t *testing.T) {
	for _, tc := range append(sampleRules, filterRules...) {
		got, err := tc.rule.Spec(tc.f)
		if err != nil {
			t.Errorf("Spec(%v): %v", tc.want, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Spec:\n got %s\nwant %s", got, tc.want)
		}
		back, err := ParseRule(tc.f, got)
		if err != nil {
			t.Errorf("ParseRule(%s): %v", got, err)
			continue
		}
		again, err := back.Spec(tc.f)
		if err != nil || again != got {
			t.Errorf("re-render of %s = %s, %v", got, again, err)
		}
		// Statistic probabilities are quantized; everything else is exact.
		if !strings.Contains(got, "statistic") && !reflect.DeepEqual(normRule(back), normRule(tc.rule)) {
			t.Errorf("ParseRule(%s) = %#v, want %#v", got, back, tc.rule)
		}
	}
}

// normRule makes nil and empty slices compare equal.
func normRule(r Rule) Rule {
	if len(r.Matches) == 0 {
		r.Matches = nil
	}
	return r
}

func TestRenderRejectsInvalid(t *testing.T) {
	for name, tc := range map[string]struct {
		f Family
		r Rule
	}{
		"port without protocol": {IPv4, Rule{Matches: []Match{Ports{Dst: Port(80)}}}},
		"v6 source in v4":       {IPv4, Rule{Source: Addr{Prefix: p4("fd00::/64")}}},
		"v6 dnat in v4":         {IPv4, Rule{Target: DNAT{To: a4("fd00::1")}}},
		"probability 0":         {IPv4, Rule{Matches: []Match{Statistic{}}}},
		"probability 2":         {IPv4, Rule{Matches: []Match{Statistic{Probability: 2}}}},
		"comment newline":       {IPv4, Rule{Matches: []Match{Comment("a\nb")}}},
		"long iface":            {IPv4, Rule{In: Iface{Name: "0123456789abcdef"}}},
		"space iface":           {IPv4, Rule{In: Iface{Name: "a b"}}},
		"jump to long chain":    {IPv4, Rule{Target: Jump(strings.Repeat("X", 29))}},
		"reversed ports":        {IPv4, Rule{Protocol: TCP, Matches: []Match{Ports{Dst: PortRange{90, 80}}}}},
		"recent no name":        {IPv4, Rule{Matches: []Match{Recent{Mode: RecentSet}}}},
		"reap without seconds":  {IPv4, Rule{Matches: []Match{Recent{Mode: RecentCheck, Name: "x", Reap: true}}}},
		"no family":             {0, Rule{}},
		"negated empty source":  {IPv4, Rule{Source: Addr{Not: true}}},
		"dnat without address":  {IPv4, Rule{Target: DNAT{}}},
		"conntrack no state":    {IPv4, Rule{Matches: []Match{Conntrack{}}}},
	} {
		if _, err := tc.r.Args(tc.f); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestParseSave(t *testing.T) {
	const saved = `# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 22:33:13 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [10:600]
:FOREIGN - [0:0]
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"bridge\" id: \"c1\"" -j CNI-x
-A FOREIGN -m foo --bar -j ACCEPT
COMMIT
# Completed
`
	rs, err := ParseSave(IPv4, saved)
	if err != nil {
		t.Fatal(err)
	}
	nat := rs.Table(TableNAT)
	if nat == nil || len(nat.Chains) != 3 || nat.Chain("POSTROUTING").Policy != "ACCEPT" || nat.Chain("FOREIGN").Policy != "" {
		t.Fatalf("parsed %+v", nat)
	}
	if got := nat.Chain("FOREIGN").Rules; len(got) != 1 || got[0] != "-m foo --bar -j ACCEPT" {
		t.Errorf("FOREIGN rules = %q", got)
	}
	if _, err := ParseRule(IPv4, nat.Chain("FOREIGN").Rules[0]); !errors.Is(err, ErrNotSupported) {
		t.Errorf("unknown module: err = %v, want ErrNotSupported", err)
	}
	r, err := ParseRule(IPv4, nat.Chain("POSTROUTING").Rules[0])
	if err != nil || r.Matches[0] != Comment(`name: "bridge" id: "c1"`) || r.Target != Jump("CNI-x") {
		t.Errorf("POSTROUTING rule = %#v, %v", r, err)
	}
	for _, bad := range []string{"-A X -j Y\n", "*nat\n-A NOPE -j ACCEPT\nCOMMIT\n", "*nat\n:X -\n"} {
		if _, err := ParseSave(IPv4, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSave(%q): err = %v, want ErrInvalid", bad, err)
		}
	}
}

// FuzzParseRender checks that whatever ParseRule accepts renders to a spec
// that parses back to the same spec (render∘parse is idempotent), and that
// ParseRule never panics.
func FuzzParseRender(f *testing.F) {
	for _, tc := range append(sampleRules, filterRules...) {
		f.Add(uint8(tc.f), tc.want)
	}
	f.Add(uint8(4), `-p tcp -m tcp --sport 1:2 ! --dport 3 -j DNAT --to-destination 1.2.3.4:5-6`)
	f.Add(uint8(6), `! -s ::1/128 -m mark --mark 0x1/0xff -j MARK --or-mark 0x3`)
	f.Fuzz(func(t *testing.T, fam uint8, spec string) {
		fm := Family(fam)
		if !fm.Valid() {
			fm = IPv4
		}
		r, err := ParseRule(fm, spec)
		if err != nil {
			return
		}
		s1, err := r.Spec(fm)
		if err != nil {
			return // parsed but not renderable (e.g. out-of-range values): rejected before the kernel
		}
		r2, err := ParseRule(fm, s1)
		if err != nil {
			t.Fatalf("rendered %q from %q does not parse: %v", s1, spec, err)
		}
		s2, err := r2.Spec(fm)
		if err != nil || s2 != s1 {
			t.Fatalf("render not stable: %q -> %q -> %q (%v)", spec, s1, s2, err)
		}
	})
}

func TestTransactionText(t *testing.T) {
	c := Chain{IPv4, TableNAT, "PODNET-SVC"}
	post := Chain{IPv4, TableNAT, "POSTROUTING"}
	tx := NewTransaction().
		Declare(c, Rule{Target: DNAT{To: a4("10.0.0.1"), Ports: Port(80)}, Protocol: TCP}).
		EnsureRule(post, true, Rule{Target: Jump(c.Name)}).
		Insert(Chain{IPv4, TableNAT, "PODNET-SERVICES"}, 3, Rule{Target: Jump(c.Name)}).
		Delete(Chain{IPv4, TableNAT, "PODNET-SERVICES"}, Rule{Target: Jump("PODNET-OLD")}).
		DeleteChain(Chain{IPv4, TableNAT, "PODNET-OLD"})
	got, err := tx.Text(IPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := `*nat
:PODNET-SVC - [0:0]
:PODNET-OLD - [0:0]
-A PODNET-SVC -p tcp -j DNAT --to-destination 10.0.0.1:80
-I POSTROUTING 1 -j PODNET-SVC
-I PODNET-SERVICES 3 -j PODNET-SVC
-D PODNET-SERVICES -j PODNET-OLD
-X PODNET-OLD
COMMIT
`
	if got != want {
		t.Errorf("Text:\n%s\nwant:\n%s", got, want)
	}
	// The jump is already there: EnsureRule adds nothing.
	got, _ = tx.Text(IPv4, &TableRules{Name: TableNAT, Chains: []*ChainRules{{Name: "POSTROUTING", Policy: "ACCEPT", Rules: []string{"-j PODNET-SVC"}}}})
	if strings.Contains(got, "POSTROUTING") {
		t.Errorf("EnsureRule of a present rule rendered:\n%s", got)
	}
}

func TestTransactionBuilderErrors(t *testing.T) {
	c := Chain{IPv4, TableNAT, "PODNET-X"}
	for name, tx := range map[string]*Transaction{
		"declare builtin":    NewTransaction().Declare(Chain{IPv4, TableNAT, "POSTROUTING"}),
		"bad rule":           NewTransaction().Declare(c, Rule{Matches: []Match{Ports{Dst: Port(1)}}}),
		"no family":          NewTransaction().Append(Chain{0, TableNAT, "X"}),
		"long chain":         NewTransaction().Flush(Chain{IPv4, TableNAT, strings.Repeat("A", 29)}),
		"prune empty prefix": NewTransaction().Prune(IPv4, TableNAT, nil),
		"first error kept":   NewTransaction().Declare(c).Insert(c, -1).Append(c, Rule{}),
	} {
		if err := NewFake().Run(context.Background(), tx); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Run err = %v, want ErrInvalid", name, err)
		}
	}
}
