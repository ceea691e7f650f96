package policy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/podnet/podnet"
)

// recorded returns an Enforcer writing into a recorder: no root, no
// kernel.
func recorded(t testing.TB) (*Enforcer, *recorder) {
	t.Helper()
	rec := &recorder{}
	e, err := New(Config{dial: func() (nftConn, error) { return rec, nil }})
	if err != nil {
		t.Fatal(err)
	}
	return e, rec
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// load puts w into e and syncs.
func load(t testing.TB, e *Enforcer, w *world) SyncResult {
	t.Helper()
	for _, ns := range w.namespaces {
		must(t, e.UpdateNamespace(ns))
	}
	for _, n := range w.nodes {
		must(t, e.UpdateNode(n))
	}
	for _, p := range w.pods {
		must(t, e.UpdatePod(p))
	}
	for _, p := range w.policies {
		must(t, e.UpdatePolicy(p))
	}
	for _, a := range w.admins {
		must(t, e.UpdateAdminPolicy(a))
	}
	for _, b := range w.baselines {
		must(t, e.UpdateBaselinePolicy(b))
	}
	res, err := e.Sync(context.Background())
	must(t, err)
	return res
}

// traced runs every probe of want through the recorded table.
func traced(t testing.TB, rec *recorder, w *world, want map[probeKey]bool, v6 bool) map[probeKey]bool {
	t.Helper()
	got := map[probeKey]bool{}
	for k := range want {
		p := packet{src: w.pod(k.src).IPs[b2i(v6)], dst: w.pod(k.dst).IPs[b2i(v6)], proto: k.proto, dport: k.port}
		ok, _, err := rec.trace(p)
		must(t, err)
		got[k] = ok
	}
	return got
}

// TestTruthTablesTraced: for every upstream-style case, on each node, in
// both families, the table lets through exactly the connections the
// reference semantics allow (pods of the other node unenforced here).
func TestTruthTablesTraced(t *testing.T) {
	for _, tc := range policyCases() {
		for node := range 2 {
			for _, v6 := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/node%d/v6=%v", tc.name, node, v6), func(t *testing.T) {
					w := newWorld(node)
					w.policies = tc.policies
					e, rec := recorded(t)
					load(t, e, w)
					want := w.expected(tc.ports, v6)
					if d := matrixDiff(traced(t, rec, w, want, v6), want); len(d) > 0 {
						t.Errorf("%d probes differ:\n%s", len(d), strings.Join(d, "\n"))
					}
				})
			}
		}
	}
}

// TestEstablishedPass: replies and established connections pass the
// policies that would drop their first packet.
func TestEstablishedPass(t *testing.T) {
	w := newWorld(0)
	w.policies = []Policy{{Name: Name{"x", "deny"}, Types: Ingress | Egress}}
	e, rec := recorded(t)
	load(t, e, w)
	p := packet{src: podAddr("y", "a", false), dst: podAddr("x", "a", false), proto: TCP, dport: 80}
	if ok, _, _ := rec.trace(p); ok {
		t.Fatal("new connection to an isolated pod passed")
	}
	p.established = true
	if ok, _, _ := rec.trace(p); !ok {
		t.Fatal("established connection dropped")
	}
}

// randomWorld changes w at random: a pod relabelled, moved to another
// address, added or deleted; a namespace relabelled; a policy, an admin
// or a baseline policy added, changed or deleted. The policies come from
// the upstream and admin cases and from random rules.
func randomChange(r *rand.Rand, w *world) {
	switch r.IntN(10) {
	case 0: // relabel a pod
		p := &w.pods[r.IntN(len(w.pods))]
		p.Labels = map[string]string{"pod": testPods[r.IntN(3)]}
		if r.IntN(2) == 0 {
			p.Labels["role"] = "db"
		}
	case 1: // readdress or drop a pod's address
		i := r.IntN(len(w.pods))
		p := &w.pods[i]
		if r.IntN(3) == 0 {
			p.IPs = nil
		} else {
			p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(2)), byte(100 + 10*r.IntN(3) + i)})}
			if r.IntN(2) == 0 {
				p.IPs = append(p.IPs, podAddr(p.Namespace, p.Name.Name, true))
			}
		}
	case 2: // relabel a namespace
		ns := testNamespaces[r.IntN(3)]
		l := nsLabels(ns)
		if r.IntN(2) == 0 {
			l["ns"] = testNamespaces[r.IntN(3)]
		}
		w.namespaces[ns] = Namespace{Name: ns, Labels: l}
	case 3, 4: // add or replace a policy
		pol := randomPolicy(r)
		w.policies = slices.DeleteFunc(w.policies, func(p Policy) bool { return p.Name == pol.Name })
		w.policies = append(w.policies, pol)
	case 5: // delete a policy
		if len(w.policies) > 0 {
			i := r.IntN(len(w.policies))
			w.policies = slices.Delete(w.policies, i, i+1)
		}
	case 6: // a pod moves to the other node
		p := &w.pods[r.IntN(len(w.pods))]
		p.Local = !p.Local
	case 7: // add or replace an admin or a baseline policy
		if r.IntN(3) == 0 {
			b := randomBaseline(r)
			w.baselines = slices.DeleteFunc(slices.Clone(w.baselines), func(o BaselinePolicy) bool { return o.Name == b.Name })
			w.baselines = append(w.baselines, b)
			break
		}
		a := randomAdmin(r)
		w.admins = slices.DeleteFunc(slices.Clone(w.admins), func(o AdminPolicy) bool { return o.Name == a.Name })
		w.admins = append(w.admins, a)
	case 9: // relabel, readdress, delete or add a node
		i := r.IntN(3)
		n := Node{Name: fmt.Sprintf("node%d", i), Labels: map[string]string{"zone": fmt.Sprintf("z%d", r.IntN(2))},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 240, 0, byte(10 + r.IntN(4))})}}
		w.nodes = slices.DeleteFunc(slices.Clone(w.nodes), func(o Node) bool { return o.Name == n.Name })
		if r.IntN(4) > 0 {
			w.nodes = append(w.nodes, n)
		}
	case 8: // delete an admin or a baseline policy
		if i := r.IntN(3); i < len(w.admins) {
			w.admins = slices.Delete(slices.Clone(w.admins), i, i+1)
		}
		if r.IntN(2) == 0 && len(w.baselines) > 0 {
			w.baselines = w.baselines[1:]
		}
	}
}

func randomPolicy(r *rand.Rand) Policy {
	cases := policyCases()
	if r.IntN(3) == 0 {
		c := cases[r.IntN(len(cases))]
		p := c.policies[r.IntN(len(c.policies))]
		return p
	}
	pol := Policy{Name: Name{testNamespaces[r.IntN(3)], fmt.Sprintf("p%d", r.IntN(4))}, Types: Direction(1 + r.IntN(3))}
	if r.IntN(2) == 0 {
		pol.PodSelector = *sel("pod", testPods[r.IntN(3)])
	}
	for _, d := range []Direction{Ingress, Egress} {
		if pol.Types&d == 0 {
			continue
		}
		var rules []Rule
		for range r.IntN(3) {
			rules = append(rules, randomRule(r))
		}
		if d == Ingress {
			pol.Ingress = rules
		} else {
			pol.Egress = rules
		}
	}
	return pol
}

func randomRule(r *rand.Rand) Rule {
	var rule Rule
	for range r.IntN(3) {
		switch r.IntN(4) {
		case 0:
			rule.Peers = append(rule.Peers, Peer{Pods: sel("pod", testPods[r.IntN(3)])})
		case 1:
			rule.Peers = append(rule.Peers, Peer{Namespaces: sel("ns", testNamespaces[r.IntN(3)])})
		case 2:
			rule.Peers = append(rule.Peers, Peer{Namespaces: &Selector{}, Pods: sel("role", "db")})
		case 3:
			rule.Peers = append(rule.Peers, Peer{IPBlock: &IPBlock{CIDR: pfx("10.244.0.0/23"), Except: []netip.Prefix{pfx(fmt.Sprintf("10.244.%d.0/25", r.IntN(2)))}}})
		}
	}
	for range r.IntN(3) {
		proto := testProtos[r.IntN(2)]
		switch r.IntN(4) {
		case 0:
			rule.Ports = append(rule.Ports, Port{Protocol: proto, Port: testPorts[r.IntN(2)]})
		case 1:
			rule.Ports = append(rule.Ports, Port{Protocol: proto, Port: 80, EndPort: 81})
		case 2:
			rule.Ports = append(rule.Ports, Port{Protocol: proto, Name: fmt.Sprintf("serve-%d-%s", testPorts[r.IntN(2)], strings.ToLower(string(proto)))})
		case 3:
			rule.Ports = append(rule.Ports, Port{Protocol: proto})
		}
	}
	return rule
}

// replaceModel makes e's model w's, deleting what w lacks through the
// Delete methods, and syncs.
func replaceModel(t testing.TB, e *Enforcer, w *world) SyncResult {
	t.Helper()
	e.mu.Lock()
	pols, pods, nss := slices.Collect(maps.Keys(e.m.policies)), slices.Collect(maps.Keys(e.m.pods)), slices.Collect(maps.Keys(e.m.namespaces))
	admins, baselines := slices.Collect(maps.Keys(e.m.admins)), slices.Collect(maps.Keys(e.m.baselines))
	nodes := slices.Collect(maps.Keys(e.m.nodes))
	e.mu.Unlock()
	for _, n := range nodes {
		if !slices.ContainsFunc(w.nodes, func(o Node) bool { return o.Name == n }) {
			e.DeleteNode(n)
		}
	}
	for _, n := range admins {
		if !slices.ContainsFunc(w.admins, func(a AdminPolicy) bool { return a.Name == n }) {
			e.DeleteAdminPolicy(n)
		}
	}
	for _, n := range baselines {
		if !slices.ContainsFunc(w.baselines, func(b BaselinePolicy) bool { return b.Name == n }) {
			e.DeleteBaselinePolicy(n)
		}
	}
	for _, n := range pols {
		if !slices.ContainsFunc(w.policies, func(p Policy) bool { return p.Name == n }) {
			e.DeletePolicy(n)
		}
	}
	for _, n := range pods {
		if !slices.ContainsFunc(w.pods, func(p Pod) bool { return p.Name == n }) {
			e.DeletePod(n)
		}
	}
	for _, n := range nss {
		if _, ok := w.namespaces[n]; !ok {
			e.DeleteNamespace(n)
		}
	}
	return load(t, e, w)
}

// TestPartialSyncsEqualFullSync drives random sequences of changes to
// pods, labels, namespaces and policies through partial syncs and checks
// after each that the table is what a fresh enforcer's full sync of the
// same model writes, that Verify finds it intact, and that it lets
// through what the reference allows.
func TestPartialSyncsEqualFullSync(t *testing.T) {
	for seed := range uint64(12) {
		r := rand.New(rand.NewPCG(seed, 20))
		w := newWorld(int(seed % 2))
		e, rec := recorded(t)
		load(t, e, w)
		for step := range 40 {
			randomChange(r, w)
			res := replaceModel(t, e, w)
			if res.Full {
				t.Fatalf("seed %d step %d: a full sync (%s), want partial", seed, step, res.Reason)
			}
			if ok, err := e.Verify(context.Background()); !ok || err != nil {
				t.Fatalf("seed %d step %d: Verify = %v, %v after a sync", seed, step, ok, err)
			}
			fresh, freshRec := recorded(t)
			load(t, fresh, w)
			if got, want := rec.Dump(), freshRec.Dump(); got != want {
				t.Fatalf("seed %d step %d: partial syncs differ from a full sync:\n%s", seed, step, lineDiff(want, got))
			}
			want := w.expected(nil, false)
			if d := matrixDiff(traced(t, rec, w, want, false), want); len(d) > 0 {
				t.Fatalf("seed %d step %d: %d probes differ from the reference:\n%s", seed, step, len(d), strings.Join(d, "\n"))
			}
		}
	}
}

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

// TestPodChangesAreElements: a new pod, a relabel into an existing set of
// policies, a namespace relabel and an address in an ipBlock change set
// and map elements only; a pod that brings a new set of policies adds
// its chain.
func TestPodChangesAreElements(t *testing.T) {
	w := newWorld(0)
	w.policies = []Policy{
		{Name: Name{"x", "deny"}, Types: Ingress},
		{Name: Name{"x", "from-y"}, PodSelector: *sel("pod", "a"), Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "y")}}}}},
	}
	e, _ := recorded(t)
	load(t, e, w)
	step := func(what string, change func(), wantRules bool) {
		t.Helper()
		change()
		res := replaceModel(t, e, w)
		if res.Full || (res.Rules > 0) != wantRules || res.Elements == 0 {
			t.Errorf("%s: %+v; want rules written %v and elements", what, res, wantRules)
		}
	}
	step("new pod in an existing set", func() {
		p := *w.pod("x/b")
		p.Name.Name, p.IPs = "d", []netip.Addr{netip.MustParseAddr("10.244.0.99")}
		w.pods = append(w.pods, p)
	}, false)
	step("relabel into another existing set", func() { w.pod("x/d").Labels = map[string]string{"pod": "a"} }, false)
	step("peer namespace relabelled", func() { w.namespaces["z"] = Namespace{Name: "z", Labels: map[string]string{"ns": "y"}} }, false)
	step("remote peer pod added", func() {
		w.pods = append(w.pods, Pod{Name: Name{"y", "far"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.7.7")}})
	}, false)
	step("new combination of policies", func() {
		w.policies = append(w.policies, Policy{Name: Name{"x", "only-b"}, PodSelector: *sel("pod", "b"), Types: Ingress, Ingress: []Rule{{Ports: []Port{{Port: 80}}}}})
	}, true)
}

// TestRulesPerPodConstant measures what the first packet of a connection
// to a pod meets: the rules evaluated do not grow with the policies that
// select other local pods (1, 100, 1000 of them); the table grows by
// four rules per such policy (its rule in each family's chain, and the
// jump and drop of its pod's set chain).
func TestRulesPerPodConstant(t *testing.T) {
	var evaluated, tableRules []int
	for _, n := range []int{1, 100, 1000} {
		w := newWorld(0)
		w.policies = []Policy{{Name: Name{"x", "web"}, PodSelector: *sel("pod", "a"), Types: Ingress,
			Ingress: []Rule{{Peers: []Peer{{Pods: sel("pod", "b")}}, Ports: []Port{{Port: 80}}}}}}
		for i := range n - 1 {
			w.pods = append(w.pods, Pod{Name: Name{"y", fmt.Sprintf("other-%d", i)}, Labels: map[string]string{"app": fmt.Sprintf("app-%d", i)},
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)})}, Local: true})
			w.policies = append(w.policies, Policy{Name: Name{"y", fmt.Sprintf("other-%d", i)}, PodSelector: *sel("app", fmt.Sprintf("app-%d", i)),
				Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Pods: sel("app", "client")}}, Ports: []Port{{Port: uint16(1000 + i)}}}}})
		}
		e, rec := recorded(t)
		load(t, e, w)
		ok, rules, err := rec.trace(packet{src: podAddr("x", "b", false), dst: podAddr("x", "a", false), proto: TCP, dport: 80})
		if err != nil || !ok {
			t.Fatalf("%d policies: allowed %v, %v", n, ok, err)
		}
		evaluated, tableRules = append(evaluated, rules), append(tableRules, rec.rules())
	}
	t.Logf("rules evaluated for the first packet with 1, 100, 1000 policies: %v; rules in the table: %v", evaluated, tableRules)
	if evaluated[0] != evaluated[1] || evaluated[0] != evaluated[2] {
		t.Errorf("rules evaluated %v: grow with policies selecting other pods", evaluated)
	}
}

// TestVerifyRepairs: what someone changes in the table — an element
// deleted, a set flushed, a rule removed, the table deleted — reads as a
// difference, and the next sync repairs it with a full one.
func TestVerifyRepairs(t *testing.T) {
	tamper := map[string]func(tb *recTable){
		"vmap element deleted": func(tb *recTable) {
			for k := range tb.sets["ingress-ip"].elems {
				delete(tb.sets["ingress-ip"].elems, k)
				break
			}
		},
		"peers set flushed": func(tb *recTable) {
			for n, s := range tb.sets {
				if strings.HasSuffix(n, "-peers-ip") {
					clear(s.elems)
				}
			}
		},
		"rule removed": func(tb *recTable) {
			c := tb.chains["egress"]
			c.rules = c.rules[:len(c.rules)-1]
		},
	}
	for name, change := range tamper {
		t.Run(name, func(t *testing.T) {
			w := newWorld(0)
			w.policies = policyCases()[2].policies
			e, rec := recorded(t)
			load(t, e, w)
			want := rec.Dump()
			change(rec.table)
			if ok, err := e.Verify(context.Background()); ok || err != nil {
				t.Fatalf("Verify = %v, %v; want false", ok, err)
			}
			res, err := e.Sync(context.Background())
			if err != nil || !res.Full {
				t.Fatalf("repair: %+v %v", res, err)
			}
			if got := rec.Dump(); got != want {
				t.Errorf("repaired table differs:\n%s", lineDiff(want, got))
			}
		})
	}
	t.Run("table deleted", func(t *testing.T) {
		w := newWorld(0)
		e, rec := recorded(t)
		load(t, e, w)
		rec.table = nil
		res, err := e.Sync(context.Background())
		if err != nil || !res.Full || res.Reason != "table missing or flushed" {
			t.Fatalf("%+v %v", res, err)
		}
	})
}

// TestDeniedCountersSurviveFullSync: the drop counters count denied
// first packets and keep their counts over a full sync.
func TestDeniedCountersSurviveFullSync(t *testing.T) {
	w := newWorld(0)
	w.policies = []Policy{{Name: Name{"x", "deny"}, Types: Ingress}}
	e, rec := recorded(t)
	load(t, e, w)
	rec.trace(packet{src: podAddr("y", "a", false), dst: podAddr("x", "a", false), proto: TCP, dport: 80})
	e.RequestFullSync("test")
	if _, err := e.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	in, out, err := e.Denied(context.Background())
	if err != nil || in != 1 || out != 0 {
		t.Fatalf("Denied = %d, %d, %v; want 1, 0", in, out, err)
	}
}

// TestInvalidInputChangesNothing: bad input is refused with ErrInvalid
// before the model changes.
func TestInvalidInputChangesNothing(t *testing.T) {
	e, rec := recorded(t)
	bad := []error{
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}}),
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}, Types: Ingress, Egress: []Rule{{}}}),
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}, Types: Ingress, Ingress: []Rule{{Ports: []Port{{Port: 90, EndPort: 80}}}}}),
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}, Types: Ingress, Ingress: []Rule{{Ports: []Port{{Name: "web", Port: 80}}}}}),
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}, Types: Ingress, Ingress: []Rule{{Peers: []Peer{{IPBlock: &IPBlock{CIDR: pfx("10.0.0.0/8"), Except: []netip.Prefix{pfx("11.0.0.0/8")}}}}}}}),
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}, Types: Ingress, Ingress: []Rule{{Peers: []Peer{{}}}}}),
		e.UpdatePolicy(Policy{Name: Name{"x", "p"}, Types: Ingress, PodSelector: Selector{Expressions: []Requirement{{Key: "a", Operator: OpIn}}}}),
		e.UpdatePolicy(Policy{Name: Name{"", "p"}, Types: Ingress}),
		e.UpdatePod(Pod{Name: Name{"x", "a"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}}),
		e.UpdatePod(Pod{Name: Name{"x", "a"}, Ports: []ContainerPort{{Name: "web"}}}),
		e.UpdateNamespace(Namespace{}),
	}
	for i, err := range bad {
		var op *podnet.OpError
		if !errors.Is(err, ErrInvalid) || errors.As(err, &op) {
			t.Errorf("input %d: %v, want an ErrInvalid", i, err)
		}
	}
	if res, err := e.Sync(context.Background()); err != nil || !res.Full {
		t.Fatal(res, err)
	}
	if len(e.m.policies)+len(e.m.pods)+len(e.m.namespaces) != 0 || rec.rules() != 12 {
		t.Errorf("model or table changed: %d rules\n%s", rec.rules(), rec.Dump())
	}
}
