package service

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/iptables"
)

var (
	podCIDR   = netip.MustParsePrefix("10.200.0.0/16")
	nodeAddr  = "10.240.0.10"
	clientPod = netip.MustParseAddr("10.200.0.9")
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(addr, node string) Endpoint {
	return Endpoint{Addr: ip(addr), Ready: true, Serving: true, NodeName: node}
}

// web is a Service with a cluster IP, a NodePort and 3 endpoints on two
// nodes.
func web() Service {
	return Service{
		Name:       Name{"default", "web"},
		ClusterIPs: []netip.Addr{ip("10.96.0.20")},
		Ports:      []Port{{Name: "http", Protocol: TCP, Port: 80, TargetPort: 8080, NodePort: 31088}},
		Endpoints:  []Endpoint{ep("10.200.0.2", "node0"), ep("10.200.0.3", "node0"), ep("10.200.1.2", "node1")},
	}
}

func fakeProxy(t *testing.T, prefix string, svcs ...Service) (*Proxy, *iptables.Fake) {
	t.Helper()
	fk := iptables.NewFake()
	p, err := New(Config{Backend: IPTables(fk), ChainPrefix: prefix, NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if err := p.Update(s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p, fk
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

// dnats returns the DNAT destinations of outcomes with their probability,
// and whether every outcome carries the masquerade mark.
func dnats(t *testing.T, out map[pkt]float64) (map[netip.AddrPort]float64, map[netip.AddrPort]bool) {
	t.Helper()
	d, m := map[netip.AddrPort]float64{}, map[netip.AddrPort]bool{}
	for p, prob := range out {
		if p.verdict != "DNAT" {
			t.Fatalf("outcome %+v (p=%v) is not a DNAT", p, prob)
		}
		d[p.dnat] += prob
		m[p.dnat] = p.mark&0x4000 != 0
	}
	return d, m
}

// TestChainNamesMatchArticle: with prefix KUBE the chain names are
// kube-proxy's, as iptables-save shows kube-proxy's.
func TestChainNamesMatchArticle(t *testing.T) {
	c, err := NewChains(KubeChainPrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ got, want string }{
		{c.Service(Name{"kube-system", "kube-dns"}, "dns-tcp", TCP), "KUBE-SVC-ERIFXISQEP7F7OF4"},
		{c.Service(Name{"kube-system", "kube-dns"}, "dns", UDP), "KUBE-SVC-TCOU7JCQXEZGVUNU"},
		{c.Service(Name{"default", "nginx"}, "", TCP), "KUBE-SVC-4N57TFCL4MD7ZTDA"},
		{c.Services(), "KUBE-SERVICES"}, {c.NodePorts(), "KUBE-NODEPORTS"}, {c.MarkMasq(), "KUBE-MARK-MASQ"},
		{c.Postrouting(), "KUBE-POSTROUTING"}, {c.Canary(), "KUBE-PROXY-CANARY"}, {c.ExternalServices(), "KUBE-EXTERNAL-SERVICES"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
	d, _ := NewChains("")
	if n := d.Endpoint(Name{"default", "web"}, "http", TCP, netip.MustParseAddrPort("10.200.0.2:8080")); len(n) > 28 || !d.Owns(n) || !strings.HasPrefix(n, "PODNET-SEP-") {
		t.Errorf("endpoint chain %q", n)
	}
	for _, foreign := range []string{"PODNET-MASQ-KT4DQWV2HPXJMLKJ", "PODNET-HOSTPORTS", "KUBE-SVC-ERIFXISQEP7F7OF4", "PODNET-SVC-lower0000000000"} {
		if d.Owns(foreign) {
			t.Errorf("Owns(%q)", foreign)
		}
	}
	if _, err := NewChains("TOOLONGX"); !errors.Is(err, ErrInvalid) {
		t.Errorf("8-byte prefix: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for name, mod := range map[string]func(*Service){
		"no name":            func(s *Service) { s.Name.Name = "" },
		"no ports":           func(s *Service) { s.Ports = nil },
		"port 0":             func(s *Service) { s.Ports[0].Port = 0 },
		"bad protocol":       func(s *Service) { s.Ports[0].Protocol = "ICMP" },
		"unnamed of two":     func(s *Service) { s.Ports = append(s.Ports, Port{Port: 81}) },
		"same port twice":    func(s *Service) { s.Ports = append(s.Ports, Port{Name: "b", Port: 80}) },
		"same nodeport":      func(s *Service) { s.Ports = append(s.Ports, Port{Name: "b", Port: 81, NodePort: 31088}) },
		"two v4 cluster IPs": func(s *Service) { s.ClusterIPs = append(s.ClusterIPs, ip("10.96.0.21")) },
		"invalid cluster IP": func(s *Service) { s.ClusterIPs = []netip.Addr{{}} },
		"external=cluster":   func(s *Service) { s.ExternalIPs = s.ClusterIPs },
		"bad affinity":       func(s *Service) { s.Affinity = "Cookie" },
		"bad policy":         func(s *Service) { s.ExternalTrafficPolicy = "Nearby" },
		"endpoint twice":     func(s *Service) { s.Endpoints = append(s.Endpoints, s.Endpoints[0]) },
		"endpoint port 0":    func(s *Service) { s.Endpoints[0].Ports = map[string]uint16{"http": 0} },
		"quote in name":      func(s *Service) { s.Name.Name = `we"b` },
	} {
		s := web()
		mod(&s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "default/") {
			t.Errorf("%s: %v", name, err)
		}
	}
	s := web()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestTraceClusterIP: a pod's packet to the cluster IP is DNATed to each
// endpoint with probability 1/3 and not masqueraded; the node's own (off
// cluster) packet is masqueraded.
func TestTraceClusterIP(t *testing.T) {
	_, fk := fakeProxy(t, "", web())
	tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	for _, tc := range []struct {
		chain string
		src   netip.Addr
		masq  bool
	}{{"PREROUTING", clientPod, false}, {"OUTPUT", ip(nodeAddr), true}} {
		d, m := dnats(t, tr.outcomes(tc.chain, pkt{src: tc.src, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}))
		if len(d) != 3 {
			t.Fatalf("%s: %v", tc.chain, d)
		}
		for a, prob := range d {
			if !near(prob, 1.0/3) || m[a] != tc.masq || a.Port() != 8080 {
				t.Errorf("%s from %s: %s p=%v masq=%v", tc.chain, tc.src, a, prob, m[a])
			}
		}
	}
	// Another port of the cluster IP is not a Service.
	if out := tr.outcomes("PREROUTING", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 81}); len(out) != 1 || slices.Collect(mapKeys(out))[0].verdict != "" {
		t.Errorf("port 81: %v", out)
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestTraceNodePort: a NodePort packet to a local address goes to every
// endpoint, masqueraded (policy Cluster); with policy Local only to this
// node's endpoints and with the client address kept.
func TestTraceNodePort(t *testing.T) {
	outside := ip("192.168.50.2")
	for _, local := range []bool{false, true} {
		s := web()
		if local {
			s.ExternalTrafficPolicy = PolicyLocal
		}
		_, fk := fakeProxy(t, "", s)
		tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
		d, m := dnats(t, tr.outcomes("PREROUTING", pkt{src: outside, dst: ip(nodeAddr), proto: iptables.TCP, dport: 31088}))
		want := 3
		if local {
			want = 2
		}
		if len(d) != want {
			t.Fatalf("local=%v: %v", local, d)
		}
		for a, prob := range d {
			if !near(prob, 1/float64(want)) || m[a] == local || local && a.Addr() == ip("10.200.1.2") {
				t.Errorf("local=%v: %s p=%v masq=%v", local, a, prob, m[a])
			}
		}
		// The NodePort on a non-local address is not served.
		if out := tr.outcomes("PREROUTING", pkt{src: outside, dst: ip("10.240.0.99"), proto: iptables.TCP, dport: 31088}); len(out) != 1 {
			t.Errorf("non-local: %v", out)
		}
	}
}

// TestTraceHairpin: an endpoint reaching its own Service is marked for
// masquerade, so the reply comes back through the node.
func TestTraceHairpin(t *testing.T) {
	s := web()
	s.Endpoints = s.Endpoints[:1]
	_, fk := fakeProxy(t, "", s)
	tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	d, m := dnats(t, tr.outcomes("PREROUTING", pkt{src: ip("10.200.0.2"), dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}))
	a := netip.MustParseAddrPort("10.200.0.2:8080")
	if !near(d[a], 1) || !m[a] {
		t.Errorf("%v %v", d, m)
	}
	post := tr.outcomes("POSTROUTING", pkt{src: ip("10.200.0.2"), mark: 0x4000})
	if len(post) != 1 || slices.Collect(mapKeys(post))[0].verdict != "MASQUERADE" {
		t.Errorf("postrouting: %v", post)
	}
}

// TestTraceAffinity: a client recorded for an endpoint goes to it.
func TestTraceAffinity(t *testing.T) {
	s := web()
	s.Affinity = AffinityClientIP
	p, fk := fakeProxy(t, "", s)
	tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	second := netip.MustParseAddrPort("10.200.0.3:8080")
	tr.recent[p.Chains().Endpoint(s.Name, "http", TCP, second)] = map[netip.Addr]bool{clientPod: true}
	d, _ := dnats(t, tr.outcomes("PREROUTING", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}))
	if len(d) != 1 || !near(d[second], 1) {
		t.Errorf("%v", d)
	}
	if !strings.Contains(fk.Dump(podnet.IPv4), "--rcheck --seconds 10800 --reap --name PODNET-SEP-") {
		t.Error("no recent check with the default timeout")
	}
}

// TestTraceNoEndpoints: a Service without endpoints is rejected in the
// filter table, its cluster IP is not DNATed.
func TestTraceNoEndpoints(t *testing.T) {
	s := web()
	s.Endpoints = nil
	_, fk := fakeProxy(t, "", s)
	natT := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	for k := range natT.outcomes("PREROUTING", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}) {
		if k.verdict != "" {
			t.Errorf("nat: %+v", k)
		}
	}
	filT := newTracer(t, fk, iptables.TableFilter, nodeAddr)
	for _, tc := range []struct {
		chain string
		p     pkt
	}{
		{"FORWARD", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}},
		{"OUTPUT", pkt{src: ip(nodeAddr), dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}},
		{"INPUT", pkt{src: ip("192.168.50.2"), dst: ip(nodeAddr), proto: iptables.TCP, dport: 31088}},
	} {
		out := filT.outcomes(tc.chain, tc.p)
		if len(out) != 1 || slices.Collect(mapKeys(out))[0].verdict != "REJECT" {
			t.Errorf("%s: %v", tc.chain, out)
		}
	}
}

// TestTraceTerminatingFallback: terminating endpoints serve only when no
// endpoint is ready.
func TestTraceTerminatingFallback(t *testing.T) {
	s := web()
	s.Endpoints[0] = Endpoint{Addr: ip("10.200.0.2"), Serving: true, Terminating: true, NodeName: "node0"}
	_, fk := fakeProxy(t, "", s)
	tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	d, _ := dnats(t, tr.outcomes("PREROUTING", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}))
	if len(d) != 2 || d[netip.MustParseAddrPort("10.200.0.2:8080")] != 0 {
		t.Errorf("with ready endpoints: %v", d)
	}
	for i := range s.Endpoints {
		s.Endpoints[i].Ready, s.Endpoints[i].Terminating = false, true
	}
	s.Endpoints[2].Serving = false
	_, fk = fakeProxy(t, "", s)
	tr = newTracer(t, fk, iptables.TableNAT, nodeAddr)
	d, _ = dnats(t, tr.outcomes("PREROUTING", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80}))
	if len(d) != 2 || !near(d[netip.MustParseAddrPort("10.200.0.2:8080")], 0.5) {
		t.Errorf("terminating only: %v", d)
	}
}

// manyServices returns n Services svc-0 … svc-(n-1) with eps endpoints each.
func manyServices(n, eps int) []Service {
	out := make([]Service, n)
	for i := range out {
		s := Service{
			Name:       Name{"bench", fmt.Sprintf("svc-%d", i)},
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      []Port{{Name: "http", Protocol: TCP, Port: 80, TargetPort: 8080, NodePort: uint16(30000 + i%2000)}},
		}
		if i >= 2000 {
			s.Ports[0].NodePort = 0
		}
		for j := range eps {
			s.Endpoints = append(s.Endpoints, Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(200 + j), byte(i >> 8), byte(i)}), Ready: true, Serving: true, NodeName: "node0"})
		}
		out[i] = s
	}
	return out
}

// normalise sorts the rules of the shared chains, whose order partial
// syncs change without changing their meaning.
func normalise(dump string) string {
	lines := strings.Split(dump, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestPartialSync: a change to one Service writes only its chains and
// -I/-D lines in the shared chains, and the result equals a full sync of
// the new state.
func TestPartialSync(t *testing.T) {
	ctx := context.Background()
	svcs := manyServices(20, 3)
	p, fk := fakeProxy(t, "", svcs...)
	check := func(what string, wantSvcs []Service, mustMention, mustNot []string) {
		t.Helper()
		res, err := p.Sync(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if res.Full {
			t.Errorf("%s: full sync (%s)", what, res.Reason)
		}
		text := fk.LastText(podnet.IPv4)
		for _, s := range mustMention {
			if !strings.Contains(text, s) {
				t.Errorf("%s: restore input lacks %q:\n%s", what, s, text)
			}
		}
		for _, s := range mustNot {
			if strings.Contains(text, s) {
				t.Errorf("%s: restore input has %q:\n%s", what, s, text)
			}
		}
		_, ref := fakeProxy(t, "", wantSvcs...)
		if got, want := normalise(fk.Dump(podnet.IPv4)), normalise(ref.Dump(podnet.IPv4)); got != want {
			t.Errorf("%s: tables differ from a full sync:\n%s\nwant\n%s", what, got, want)
		}
	}
	ch := p.Chains()
	other := ch.Service(svcs[1].Name, "http", TCP)
	// Endpoints change: the dispatch chains are not touched.
	svcs[0].Endpoints = svcs[0].Endpoints[1:]
	p.Update(svcs[0])
	check("endpoint removed", svcs, []string{":" + ch.Service(svcs[0].Name, "http", TCP), "-X " + ch.Endpoint(svcs[0].Name, "http", TCP, netip.AddrPortFrom(manyServices(1, 3)[0].Endpoints[0].Addr, 8080))},
		[]string{other, "-I " + ch.Services(), "-D " + ch.Services()})
	// Unchanged update: nothing written.
	runs := fk.Runs()
	p.Update(svcs[3])
	if res, err := p.Sync(ctx); err != nil || res.Services != 0 || fk.Runs() != runs {
		t.Errorf("no-op sync: %+v %v, runs %d→%d", res, err, runs, fk.Runs())
	}
	// No endpoints: the dispatch rule moves to a REJECT in filter.
	svcs[2].Endpoints = nil
	p.Update(svcs[2])
	check("all endpoints gone", svcs, []string{"-D " + ch.Services() + " -d 10.96.0.2/32", "-I " + ch.Services() + " 1 -d 10.96.0.2/32 -p tcp -m comment --comment \"bench/svc-2:http has no endpoints\"", "-X " + ch.Service(svcs[2].Name, "http", TCP)}, []string{other})
	// Delete and add.
	p.Delete(svcs[5].Name)
	extra := manyServices(30, 2)[25]
	p.Update(extra)
	want := append(slices.Delete(slices.Clone(svcs), 5, 6), extra)
	check("delete and add", want, []string{"-X " + ch.Service(svcs[5].Name, "http", TCP), ":" + ch.Service(extra.Name, "http", TCP)}, []string{other})
	if n, _ := p.Stats(); n != 20 {
		t.Errorf("Stats: %d services", n)
	}
}

// TestFullSyncTriggers: a vanished canary and a failed sync make the next
// sync a full one; chains of a previous run are removed, foreign ones kept.
func TestFullSyncTriggers(t *testing.T) {
	ctx := context.Background()
	fk := iptables.NewFake()
	// A previous run's chain, another component's PODNET chain, a foreign rule.
	if err := fk.Load(podnet.IPv4, "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:PODNET-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:PODNET-MASQ-KT4DQWV2HPXJMLKJ - [0:0]\n:FOREIGN - [0:0]\n"+
		"-A POSTROUTING -s 10.200.0.0/24 -j PODNET-MASQ-KT4DQWV2HPXJMLKJ\n-A PODNET-MASQ-KT4DQWV2HPXJMLKJ ! -d 10.200.0.0/24 -j MASQUERADE\n-A FOREIGN -j RETURN\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Backend: IPTables(fk), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	p.Update(web())
	res, err := p.Sync(ctx)
	if err != nil || !res.Full || res.Reason != "start" {
		t.Fatalf("first sync: %+v %v", res, err)
	}
	dump := fk.Dump(podnet.IPv4)
	if strings.Contains(dump, "PODNET-SVC-AAAAAAAAAAAAAAAA") || !strings.Contains(dump, "PODNET-MASQ-KT4DQWV2HPXJMLKJ ! -d") || !strings.Contains(dump, "FOREIGN -j RETURN") {
		t.Errorf("after first sync:\n%s", dump)
	}
	if res, err := p.Sync(ctx); err != nil || res.Full {
		t.Errorf("second sync: %+v %v", res, err)
	}
	// Someone flushes the nat table: the canary is gone.
	if err := fk.Load(podnet.IPv4, "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:PODNET-MASQ-KT4DQWV2HPXJMLKJ - [0:0]\n:FOREIGN - [0:0]\n-A PODNET-MASQ-KT4DQWV2HPXJMLKJ ! -d 10.200.0.0/24 -j MASQUERADE\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	res, err = p.Sync(ctx)
	if err != nil || !res.Full || res.Reason != "canary chain missing" {
		t.Fatalf("after flush: %+v %v", res, err)
	}
	tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	if d, _ := dnats(t, tr.outcomes("PREROUTING", pkt{src: clientPod, dst: ip("10.96.0.20"), proto: iptables.TCP, dport: 80})); len(d) != 3 {
		t.Errorf("after resync: %v", d)
	}
	// A foreign rule referencing an endpoint chain makes its removal fail.
	s := web()
	sep := p.Chains().Endpoint(s.Name, "http", TCP, netip.MustParseAddrPort("10.200.0.2:8080"))
	if err := fk.Run(ctx, iptables.NewTransaction().Declare(iptables.Chain{Family: podnet.IPv4, Table: iptables.TableNAT, Name: "FOREIGN"}, iptables.Rule{Target: iptables.Jump(sep)})); err != nil {
		t.Fatal(err)
	}
	s.Endpoints = s.Endpoints[1:]
	p.Update(s)
	if _, err := p.Sync(ctx); err == nil {
		t.Fatal("sync deleting a referenced chain succeeded")
	}
	if err := fk.Run(ctx, iptables.NewTransaction().Declare(iptables.Chain{Family: podnet.IPv4, Table: iptables.TableNAT, Name: "FOREIGN"})); err != nil {
		t.Fatal(err)
	}
	res, err = p.Sync(ctx)
	if err != nil || !res.Full || res.Reason != "previous sync failed" || strings.Contains(fk.Dump(podnet.IPv4), sep) {
		t.Errorf("retry: %+v %v", res, err)
	}
	// Cleanup leaves only what others own.
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range []iptables.Table{iptables.TableNAT, iptables.TableFilter} {
		tbl, _ := fk.Save(ctx, podnet.IPv4, f)
		for _, c := range tbl.Chains {
			if p.Chains().Owns(c.Name) {
				t.Errorf("cleanup left %s", c.Name)
			}
			for _, r := range c.Rules {
				if strings.Contains(r, "podnet service") {
					t.Errorf("cleanup left %s %s", c.Name, r)
				}
			}
		}
	}
	if !strings.Contains(fk.Dump(podnet.IPv4), "PODNET-MASQ-KT4DQWV2HPXJMLKJ ! -d") {
		t.Error("cleanup removed another component's chain")
	}
}

// TestFlowFilters: which UDP flows a change deletes.
func TestFlowFilters(t *testing.T) {
	r := renderer{chains: Chains{prefix: "PODNET"}, families: []podnet.Family{podnet.IPv4}, node: "node0"}
	s := web()
	s.Ports[0].Protocol = UDP
	two := r.udpPorts(s.clone())
	s.Endpoints = s.Endpoints[1:]
	one := r.udpPorts(s.clone())
	s.Ports[0].TargetPort = 9090
	moved := r.udpPorts(s.clone())
	s.Endpoints = nil
	none := r.udpPorts(s.clone())
	gone := ip("10.200.0.2")
	for _, tc := range []struct {
		name     string
		old, new []udpPort
		want     []conntrack.Filter
	}{
		{"endpoint removed", two, one, []conntrack.Filter{
			{Protocol: conntrack.UDP, OrigDst: ip("10.96.0.20"), DstPort: 80, ReplySrc: gone, ReplySrcPort: 8080},
			{Protocol: conntrack.UDP, DstPort: 31088, ReplySrc: gone, ReplySrcPort: 8080}}},
		{"target port changed", one, moved, []conntrack.Filter{
			{Protocol: conntrack.UDP, OrigDst: ip("10.96.0.20"), DstPort: 80, ReplySrc: ip("10.200.0.3"), ReplySrcPort: 8080},
			{Protocol: conntrack.UDP, DstPort: 31088, ReplySrc: ip("10.200.0.3"), ReplySrcPort: 8080},
			{Protocol: conntrack.UDP, OrigDst: ip("10.96.0.20"), DstPort: 80, ReplySrc: ip("10.200.1.2"), ReplySrcPort: 8080},
			{Protocol: conntrack.UDP, DstPort: 31088, ReplySrc: ip("10.200.1.2"), ReplySrcPort: 8080}}},
		{"0 to 2 endpoints", none, two, []conntrack.Filter{
			{Protocol: conntrack.UDP, OrigDst: ip("10.96.0.20"), DstPort: 80}, {Protocol: conntrack.UDP, DstPort: 31088}}},
		{"new service", nil, one, []conntrack.Filter{
			{Protocol: conntrack.UDP, OrigDst: ip("10.96.0.20"), DstPort: 80}, {Protocol: conntrack.UDP, DstPort: 31088}}},
		{"unchanged", one, one, nil},
	} {
		if got := flowFilters(tc.old, tc.new); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if got := flowFilters(two, nil); len(got) != 6 {
		t.Errorf("deleted service: %+v", got)
	}
}

// TestTraceExternalIP: traffic to an external IP goes through the
// external chain (masqueraded under policy Cluster) to every endpoint; an
// external IP without endpoints is rejected in filter.
func TestTraceExternalIP(t *testing.T) {
	s := web()
	s.ExternalIPs = []netip.Addr{ip("203.0.113.7")}
	_, fk := fakeProxy(t, "", s)
	tr := newTracer(t, fk, iptables.TableNAT, nodeAddr)
	d, m := dnats(t, tr.outcomes("PREROUTING", pkt{src: ip("192.168.50.2"), dst: ip("203.0.113.7"), proto: iptables.TCP, dport: 80}))
	if len(d) != 3 {
		t.Fatalf("%v", d)
	}
	for a := range d {
		if !m[a] {
			t.Errorf("%s not masqueraded", a)
		}
	}
	s.Endpoints = nil
	_, fk = fakeProxy(t, "", s)
	out := newTracer(t, fk, iptables.TableFilter, nodeAddr).outcomes("FORWARD", pkt{src: ip("192.168.50.2"), dst: ip("203.0.113.7"), proto: iptables.TCP, dport: 80})
	if len(out) != 1 || slices.Collect(mapKeys(out))[0].verdict != "REJECT" {
		t.Errorf("no endpoints: %v", out)
	}
}

// TestDualStack: a dual-stack Service gets rules in both families, each
// with the endpoints of its family.
func TestDualStack(t *testing.T) {
	fk := iptables.NewFake()
	p, err := New(Config{Backend: IPTables(fk), Families: []podnet.Family{podnet.IPv4, podnet.IPv6}, ClusterCIDRs: []netip.Prefix{podCIDR, pfx("fd00:200::/56")}})
	if err != nil {
		t.Fatal(err)
	}
	s := web()
	s.ClusterIPs = append(s.ClusterIPs, ip("fd00:96::20"))
	s.Endpoints = append(s.Endpoints, ep("fd00:200::2", "node0"))
	if err := p.Update(s); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	v4, v6 := fk.Dump(podnet.IPv4), fk.Dump(podnet.IPv6)
	if strings.Count(v4, "-j DNAT") != 3 || strings.Contains(v4, "fd00") {
		t.Errorf("IPv4:\n%s", v4)
	}
	for _, want := range []string{"-A PODNET-SERVICES -d fd00:96::20/128 -p tcp", "--to-destination [fd00:200::2]:8080", "! -s fd00:200::/56 -d fd00:96::20/128"} {
		if !strings.Contains(v6, want) {
			t.Errorf("IPv6 lacks %q:\n%s", want, v6)
		}
	}
	if strings.Count(v6, "-j DNAT") != 1 {
		t.Errorf("IPv6:\n%s", v6)
	}
	only4, _ := New(Config{Backend: IPTables(iptables.NewFake())})
	if err := only4.Update(s); !errors.Is(err, ErrInvalid) {
		t.Errorf("IPv6 Service on an IPv4-only proxy: %v", err)
	}
}

// TestNewRejectsBadConfig: a Config New cannot honour is an ErrInvalid
// naming the field, and no Proxy is made.
func TestNewRejectsBadConfig(t *testing.T) {
	cases := map[string]Config{
		"masquerade bit":               {MasqueradeBit: 32},
		"two IPv4 cluster CIDRs":       {ClusterCIDRs: []netip.Prefix{podCIDR, pfx("10.201.0.0/16")}},
		"loopback node port address":   {NodePortAddresses: []netip.Addr{ip("127.0.0.1")}},
		"IPv6 node port address, IPv4": {NodePortAddresses: []netip.Addr{ip("fd00::1")}},
		"two IPv4 node IPs":            {NodeIPs: []netip.Addr{ip("10.240.0.10"), ip("10.240.0.11")}},
		"loopback node IP":             {NodeIPs: []netip.Addr{ip("127.0.0.1")}},
		"IPv6 node IP, IPv4 only":      {NodeIPs: []netip.Addr{ip("fd00::1")}},
		"unspecified node IP":          {NodeIPs: []netip.Addr{ip("0.0.0.0")}},
	}
	for name, cfg := range cases {
		cfg.Backend = IPTables(iptables.NewFake())
		if p, err := New(cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: New = %v, %v; want ErrInvalid", name, p, err)
		}
	}
	cfg := Config{Backend: IPTables(iptables.NewFake()), Families: []podnet.Family{podnet.IPv4, podnet.IPv6},
		NodeIPs: []netip.Addr{ip("10.240.0.10"), ip("fd00::10")}}
	if _, err := New(cfg); err != nil {
		t.Errorf("one node IP per family: %v", err)
	}
}
