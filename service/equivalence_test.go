package service

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the code")

// recordedProxy is a Proxy writing through the nftables backend into a
// recorder: no root, no kernel.
func recordedProxy(t testing.TB, fams ...podnet.Family) (*Proxy, *nftRecorder) {
	t.Helper()
	rec := newNftRecorder()
	cidrs := []netip.Prefix{podCIDR, netip.MustParsePrefix("fd00:200::/56")}[:len(fams)]
	svcCIDRs := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/108")}[:len(fams)]
	p, err := New(Config{Backend: nftBackend{dial: func() (nftConn, error) { return rec, nil }},
		NodeName: "node0", ClusterCIDRs: cidrs, ServiceCIDRs: svcCIDRs, Families: fams,
		NodePortAddresses: []netip.Addr{ip("192.168.50.1")}})
	if err != nil {
		t.Fatal(err)
	}
	return p, rec
}

// goldenServices covers every kind of entry: cluster IP with endpoints on
// two nodes, UDP, no endpoints, external IP with a Local policy whose
// endpoints are elsewhere, ClientIP affinity, and dual-stack.
func goldenServices() []Service {
	w := web()
	dns := svc("dns", "10.96.0.10", UDP, 53, []Endpoint{ep("10.200.0.5", "node0")})
	empty := svc("empty", "10.96.0.30", TCP, 80, nil)
	local := svc("local", "10.96.0.40", TCP, 80, []Endpoint{ep("10.200.1.7", "node1")})
	local.ExternalIPs = []netip.Addr{ip("203.0.113.7")}
	local.ExternalTrafficPolicy = PolicyLocal
	local.Ports[0].NodePort = 30040
	sticky := svc("sticky", "10.96.0.50", TCP, 80, []Endpoint{ep("10.200.0.6", "node0"), ep("10.200.1.6", "node1")})
	sticky.Affinity, sticky.AffinitySeconds = AffinityClientIP, 60
	dual := svc("dual", "10.96.0.60", TCP, 443, []Endpoint{ep("10.200.0.8", "node0"), ep("fd00:200::8", "node0")})
	dual.ClusterIPs = append(dual.ClusterIPs, ip("fd00:96::60"))
	lb := svc("lb", "10.96.0.70", TCP, 443, []Endpoint{ep("10.200.0.9", "node0")})
	lb.LoadBalancerIPs = []netip.Addr{ip("203.0.113.70")}
	lb.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	return []Service{w, dns, empty, local, sticky, dual, lb}
}

// TestNftablesGolden: the batch a full sync sends, applied and printed
// (rules as nft --debug=netlink prints them), is testdata's. Run with
// -update after a deliberate change of the layout and read the diff.
func TestNftablesGolden(t *testing.T) {
	p, rec := recordedProxy(t, podnet.IPv4, podnet.IPv6)
	if err := p.Replace(goldenServices()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := rec.Dump()
	path := "testdata/nftables-full.golden"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("full sync differs from %s (go test -run TestNftablesGolden -update, then read git diff):\n%s", path, lineDiff(string(want), got))
	}
	// Semantics the golden file must show, written from the layout.
	for _, c := range []struct{ table, set, elem string }{
		{"ip podnet-proxy", "ip-backends", "10.96.0.20 . tcp . 80 . 0 : 10.200.0.2 . 8080"}, // web's first slot
		{"ip podnet-proxy", "ip-3", "10.96.0.20 . tcp . 80"},                                // web has 3 endpoints
		{"ip podnet-proxy", "no-endpoints", "10.96.0.30 . tcp . 80"},                        // empty is rejected
		{"ip podnet-proxy", "external-drop", "203.0.113.7 . tcp . 80"},                      // Local, endpoints elsewhere
		{"ip podnet-proxy", "nodeport-drop", "tcp . 30040"},
		{"ip podnet-proxy", "ip-pod-1", "203.0.113.7 . tcp . 80"}, // pods and the node still reach it
		{"ip podnet-proxy", "nodeport-pod-1", "tcp . 30040"},
		{"ip podnet-proxy", "external-masq-local", "203.0.113.7 . tcp . 80"}, // the node, masqueraded
		{"ip podnet-proxy", "ip-affinity", "10.96.0.50 . tcp . 80 : goto affinity-"},
		{"ip6 podnet-proxy", "ip-backends", "fd00:96::60 . tcp . 443 . 0 : fd00:200::8 . 8080"},
		{"ip podnet-proxy", "firewall-ips", "203.0.113.70 . tcp . 443"}, // source ranges
		{"ip podnet-proxy", "firewall-allow", "203.0.113.70 . tcp . 443 . 192.0.2.0 - 203.0.113.70 . tcp . 443 . 192.0.2.255"},
		{"ip podnet-proxy", "external-masq", "203.0.113.70 . tcp . 443"}, // served as an external IP
		{"ip podnet-proxy", "nodeport-ips", "192.168.50.1"},
	} {
		if !slices.ContainsFunc(setElements(got, c.table, c.set), func(e string) bool { return strings.HasPrefix(e, c.elem) }) {
			t.Errorf("%s set %s lacks %q", c.table, c.set, c.elem)
		}
	}
}

// setElements returns the element lines of one set in a recorder's dump.
func setElements(dump, table, set string) []string {
	var out []string
	inTable, inSet := false, false
	for _, l := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(l, "table "):
			inTable = strings.HasPrefix(l, "table "+table+" ")
		case strings.HasPrefix(l, "\tset ") || strings.HasPrefix(l, "\tchain "):
			inSet = inTable && strings.HasPrefix(l, "\tset "+set+" ")
		case inSet && strings.HasPrefix(l, "\t\t"):
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// lineDiff lists the lines only one side has.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// randomChange applies one random change to the model of services.
func randomChange(r *rand.Rand, svcs map[string]*Service) {
	names := []string{"a", "b", "c", "d", "e", "f"}
	n := names[r.IntN(len(names))]
	s := svcs[n]
	if s == nil || r.IntN(8) == 0 {
		if s != nil && r.IntN(2) == 0 {
			delete(svcs, n)
			return
		}
		i := slices.Index(names, n)
		fresh := svc(n, fmt.Sprintf("10.96.0.%d", 10+i), TCP, 80, nil)
		fresh.Ports[0].NodePort = uint16(30000 + i)
		svcs[n] = &fresh
		s = svcs[n]
	}
	switch r.IntN(6) {
	case 0, 1: // endpoint count
		k := r.IntN(6)
		s.Endpoints = nil
		for j := range k {
			node := []string{"node0", "node1"}[r.IntN(2)]
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("10.200.%d.%d", j%2, 10+j), node))
		}
	case 2:
		s.ExternalTrafficPolicy = []TrafficPolicy{PolicyCluster, PolicyLocal}[r.IntN(2)]
	case 3:
		s.InternalTrafficPolicy = []TrafficPolicy{PolicyCluster, PolicyLocal}[r.IntN(2)]
	case 4:
		s.Affinity = []Affinity{AffinityNone, AffinityClientIP}[r.IntN(2)]
	case 5:
		s.Ports[0].Protocol = []Protocol{TCP, UDP}[r.IntN(2)]
		s.ExternalIPs = [][]netip.Addr{nil, {ip("203.0.113.9")}}[r.IntN(2)]
		s.LoadBalancerIPs = [][]netip.Addr{nil, {ip("203.0.113.30")}}[r.IntN(2)]
		s.LoadBalancerSourceRanges = [][]netip.Prefix{nil, {netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.7/32")}}[r.IntN(2)]
	}
}

func modelOf(svcs map[string]*Service) []Service {
	var out []Service
	for _, s := range svcs {
		out = append(out, *s.clone())
	}
	return out
}

// TestPartialSyncsEqualFullSync drives random sequences of Service
// changes (endpoint counts, policies, affinity, protocols, external IPs,
// deletes; two Services may claim one external IP) through partial syncs
// and checks after each that the tables are what a fresh proxy's full
// sync of the same Services writes, on both backends.
func TestPartialSyncsEqualFullSync(t *testing.T) {
	backends := map[string]func(t *testing.T) (*Proxy, func() string){
		"nftables": func(t *testing.T) (*Proxy, func() string) {
			p, rec := recordedProxy(t, podnet.IPv4)
			return p, func() string { return sortedEntries(rec.Dump()) }
		},
		"iptables": func(t *testing.T) (*Proxy, func() string) {
			fk := iptables.NewFake()
			p, err := New(Config{Backend: IPTables(fk), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR},
				ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}, NodePortAddresses: []netip.Addr{ip("192.168.50.1")}})
			if err != nil {
				t.Fatal(err)
			}
			return p, func() string { return sortedChains(fk.Dump(podnet.IPv4)) }
		},
	}
	for name, mk := range backends {
		t.Run(name, func(t *testing.T) {
			for seed := range uint64(20) {
				r := rand.New(rand.NewPCG(seed, 7))
				p, dump := mk(t)
				svcs := map[string]*Service{}
				for step := range 30 {
					randomChange(r, svcs)
					if err := p.Replace(modelOf(svcs)); err != nil {
						t.Fatal(err)
					}
					res, err := p.Sync(context.Background())
					if err != nil {
						t.Fatalf("seed %d step %d: %v", seed, step, err)
					}
					if step > 0 && res.Full {
						t.Fatalf("seed %d step %d: a full sync, want partial", seed, step)
					}
					if ok, err := p.Verify(context.Background()); !ok || err != nil {
						t.Fatalf("seed %d step %d: Verify = %v, %v after a sync", seed, step, ok, err)
					}
					fresh, freshDump := mk(t)
					if err := fresh.Replace(modelOf(svcs)); err != nil {
						t.Fatal(err)
					}
					if _, err := fresh.Sync(context.Background()); err != nil {
						t.Fatal(err)
					}
					if got, want := dump(), freshDump(); got != want {
						t.Fatalf("seed %d step %d: partial syncs differ from a full sync:\n%s", seed, step, lineDiff(want, got))
					}
				}
			}
		})
	}
}

// sortedChains sorts the rules within each chain of an iptables-save
// dump: a partial sync inserts a Service's rules in the shared chains at
// the top where a full sync appends them in name order, and the proxy's
// rules there match disjoint packets, so order carries no meaning — but
// for the NODEPORTS jump, which both put last.
func sortedChains(dump string) string {
	lines := strings.Split(dump, "\n")
	var out, run []string
	flush := func() {
		slices.Sort(run)
		out = append(out, run...)
		run = nil
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") && !strings.Contains(l, "must be the last rule") {
			run = append(run, l)
			continue
		}
		flush()
		out = append(out, l)
	}
	flush()
	return strings.Join(out, "\n")
}

// sortedEntries sorts the endpoint-count rules of each *-entries chain
// of a recorder's dump: a partial sync appends the rule of a new count
// where a full sync writes them largest count first, and each matches
// keys of its own set only, so their order carries no meaning. The
// affinity rule stays first.
func sortedEntries(dump string) string {
	lines := strings.Split(dump, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "\tchain ") || !strings.Contains(lines[i], "-entries {") {
			continue
		}
		start := i + 2 // after the chain line and its affinity rule
		end := start
		for end < len(lines) && strings.HasPrefix(lines[end], "\t\t") {
			end++
		}
		if start < end {
			slices.Sort(lines[start:end])
		}
		i = end
	}
	return strings.Join(lines, "\n")
}

// TestNftablesVerifyRepairs: what someone changes inside the proxy's
// tables — a set flushed, an element deleted or added, a rule removed —
// reads as a difference, and the next sync is a full one that leaves what
// a fresh full sync writes.
func TestNftablesVerifyRepairs(t *testing.T) {
	tamper := map[string]func(rt *recTable){
		"set flushed": func(rt *recTable) {
			rs := rt.sets["ip-backends"]
			rs.elems, rs.raw = map[string]string{}, map[string]nftables.SetElement{}
		},
		"element deleted": func(rt *recTable) {
			rs := rt.sets["cluster-ips"]
			k := slices.Sorted(maps.Keys(rs.elems))[0]
			delete(rs.elems, k)
			delete(rs.raw, k)
		},
		"element added": func(rt *recTable) {
			rs := rt.sets["no-endpoints"]
			e := elem(rs.s, ipKey(ip("10.96.9.9"), TCP, 80), "")
			k, v := elemText(rs.s, e)
			rs.elems[k], rs.raw[k] = v, e
		},
		"rule removed": func(rt *recTable) {
			rc := rt.chains["firewall"]
			rc.rules = rc.rules[:len(rc.rules)-1]
		},
	}
	for name, change := range tamper {
		t.Run(name, func(t *testing.T) {
			p, rec := recordedProxy(t, podnet.IPv4, podnet.IPv6)
			must(t, p.Replace(goldenServices()))
			if _, err := p.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			want := rec.Dump()
			if ok, err := p.Verify(context.Background()); !ok || err != nil {
				t.Fatalf("untouched tables: Verify = %v, %v", ok, err)
			}
			change(rec.tables["ip podnet-proxy"])
			if ok, err := p.Verify(context.Background()); ok || err != nil {
				t.Fatalf("after the change: Verify = %v, %v; want false", ok, err)
			}
			res, err := p.Sync(context.Background())
			if err != nil || !res.Full || res.Reason != "tables differ from what was written" {
				t.Fatalf("repair: %+v %v", res, err)
			}
			if got := rec.Dump(); got != want {
				t.Errorf("repaired tables differ from the full sync's:\n%s", lineDiff(want, got))
			}
		})
	}
}
