package policy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/podnet/podnet"
)

// TestAdminTruthTablesTraced: for every admin case, on each node, in
// both families, the table lets through exactly the connections the
// reference semantics allow.
func TestAdminTruthTablesTraced(t *testing.T) {
	for _, tc := range adminCases() {
		for node := range 2 {
			for _, v6 := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/node%d/v6=%v", tc.name, node, v6), func(t *testing.T) {
					w := newWorld(node)
					tc.apply(w)
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

// TestAdminCasesDiscriminate: each admin case's truth table differs from
// the one its NetworkPolicies alone give, so that a table ignoring the
// admin and baseline policies fails it.
func TestAdminCasesDiscriminate(t *testing.T) {
	for _, tc := range adminCases() {
		w := newWorld(0)
		tc.apply(w)
		with := w.expected(tc.ports, false)
		w.admins, w.baselines = nil, nil
		if len(matrixDiff(with, w.expected(tc.ports, false))) == 0 {
			t.Errorf("%s: the admin and baseline policies change nothing", tc.name)
		}
	}
}

// TestAdminInvalidChangesNothing: bad admin and baseline policies are
// refused with an error matching ErrInvalid (ErrNotSupported for a nodes
// peer) that names the policy, before the model changes.
func TestAdminInvalidChangesNothing(t *testing.T) {
	e, rec := recorded(t)
	ok := AdminRule{Action: Deny, Peers: []AdminPeer{nsPeer("ns", "y")}}
	admin := func(mod func(*AdminPolicy)) AdminPolicy {
		p := AdminPolicy{Name: "bad", Priority: 1, Subject: nsSubject("ns", "x"), Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{nsPeer("ns", "y")}}}}
		mod(&p)
		return p
	}
	for name, p := range map[string]AdminPolicy{
		"priority below 0":      admin(func(p *AdminPolicy) { p.Priority = -1 }),
		"priority above 1000":   admin(func(p *AdminPolicy) { p.Priority = 1001 }),
		"no name":               admin(func(p *AdminPolicy) { p.Name = "" }),
		"no subject":            admin(func(p *AdminPolicy) { p.Subject = AdminSubject{} }),
		"two subjects":          admin(func(p *AdminPolicy) { p.Subject.Pods = &NamespacedPods{} }),
		"bad subject selector":  admin(func(p *AdminPolicy) { p.Subject.Namespaces.Expressions = []Requirement{{Key: "a", Operator: "Near"}} }),
		"unknown action":        admin(func(p *AdminPolicy) { p.Ingress[0].Action = "Reject" }),
		"no peers":              admin(func(p *AdminPolicy) { p.Ingress[0].Peers = nil }),
		"empty peer":            admin(func(p *AdminPolicy) { p.Ingress[0].Peers = []AdminPeer{{}} }),
		"two kinds in one peer": admin(func(p *AdminPolicy) { p.Ingress[0].Peers[0].Pods = &NamespacedPods{} }),
		"ingress networks":      admin(func(p *AdminPolicy) { p.Ingress[0].Peers = []AdminPeer{{Networks: []netip.Prefix{pfx("10.0.0.0/8")}}} }),
		"unmasked CIDR": admin(func(p *AdminPolicy) {
			p.Egress = []AdminRule{{Action: Deny, Peers: []AdminPeer{{Networks: []netip.Prefix{pfx("10.0.0.1/8")}}}}}
		}),
		"invalid CIDR": admin(func(p *AdminPolicy) {
			p.Egress = []AdminRule{{Action: Deny, Peers: []AdminPeer{{Networks: []netip.Prefix{{}}}}}}
		}),
		"named port with nodes": admin(func(p *AdminPolicy) {
			p.Egress = []AdminRule{{Action: Allow, Peers: []AdminPeer{{Nodes: &Selector{}}}, Ports: []Port{{Name: "web"}}}}
		}),
		"ingress nodes": admin(func(p *AdminPolicy) { p.Ingress[0].Peers = []AdminPeer{{Nodes: &Selector{}}} }),
		"bad nodes selector": admin(func(p *AdminPolicy) {
			p.Egress = []AdminRule{{Action: Deny, Peers: []AdminPeer{{Nodes: &Selector{MatchLabels: map[string]string{"": "x"}}}}}}
		}),
		"named port with networks": admin(func(p *AdminPolicy) {
			p.Egress = []AdminRule{{Action: Allow, Peers: []AdminPeer{{Networks: []netip.Prefix{pfx("10.0.0.0/8")}}}, Ports: []Port{{Name: "web"}}}}
		}),
		"every port":     admin(func(p *AdminPolicy) { p.Ingress[0].Ports = []Port{{Protocol: UDP}} }),
		"reversed range": admin(func(p *AdminPolicy) { p.Ingress[0].Ports = []Port{{Port: 90, EndPort: 80}} }),
		"bad protocol":   admin(func(p *AdminPolicy) { p.Ingress[0].Ports = []Port{{Protocol: "ICMP", Port: 1}} }),
	} {
		err := e.UpdateAdminPolicy(p)
		var op *podnet.OpError
		if !errors.Is(err, ErrInvalid) || errors.As(err, &op) || !strings.Contains(err.Error(), `admin network policy "`+p.Name+`"`) {
			t.Errorf("%s: %v, want an ErrInvalid naming the policy", name, err)
		}
	}
	for name, p := range map[string]BaselinePolicy{
		"pass":    {Name: "default", Subject: nsSubject(), Ingress: []AdminRule{{Action: Pass, Peers: ok.Peers}}},
		"no name": {Subject: nsSubject(), Ingress: []AdminRule{ok}},
		"subject": {Name: "default", Ingress: []AdminRule{ok}},
	} {
		if err := e.UpdateBaselinePolicy(p); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "baseline admin network policy") {
			t.Errorf("baseline %s: %v, want an ErrInvalid naming the policy", name, err)
		}
	}
	if res, err := e.Sync(context.Background()); err != nil || !res.Full {
		t.Fatal(res, err)
	}
	if len(e.m.admins)+len(e.m.baselines) != 0 || rec.rules() != 12 {
		t.Errorf("model or table changed: %d rules\n%s", rec.rules(), rec.Dump())
	}
	// A valid one, then an invalid update of it: the valid one stays.
	good := admin(func(*AdminPolicy) {})
	must(t, e.UpdateAdminPolicy(good))
	bad := good
	bad.Priority = 2000
	if err := e.UpdateAdminPolicy(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("priority 2000: %v", err)
	}
	if got := e.m.admins["bad"]; got == nil || got.priority != 1 {
		t.Errorf("the invalid update changed the model: %+v", got)
	}
}

// randomAdmin returns an admin policy from the admin cases or of random
// rules; names and priorities repeat, so that equal priorities meet.
func randomAdmin(r *rand.Rand) AdminPolicy {
	if r.IntN(3) == 0 {
		cs := adminCases()
		c := cs[r.IntN(len(cs))]
		if len(c.admins) > 0 {
			return c.admins[r.IntN(len(c.admins))]
		}
	}
	a := AdminPolicy{Name: fmt.Sprintf("anp%d", r.IntN(3)), Priority: int32(10 * r.IntN(3)), Subject: randomSubject(r)}
	for range r.IntN(3) {
		a.Ingress = append(a.Ingress, randomAdminRule(r, Ingress, []Action{Allow, Deny, Pass}))
	}
	for range r.IntN(3) {
		a.Egress = append(a.Egress, randomAdminRule(r, Egress, []Action{Allow, Deny, Pass}))
	}
	return a
}

func randomBaseline(r *rand.Rand) BaselinePolicy {
	b := BaselinePolicy{Name: []string{"default", "other"}[r.IntN(2)], Subject: randomSubject(r)}
	for range r.IntN(3) {
		b.Ingress = append(b.Ingress, randomAdminRule(r, Ingress, []Action{Allow, Deny}))
	}
	for range r.IntN(3) {
		b.Egress = append(b.Egress, randomAdminRule(r, Egress, []Action{Allow, Deny}))
	}
	return b
}

func randomSubject(r *rand.Rand) AdminSubject {
	switch r.IntN(3) {
	case 0:
		return AdminSubject{Namespaces: &Selector{}}
	case 1:
		return nsSubject("ns", testNamespaces[r.IntN(3)])
	}
	return AdminSubject{Pods: &NamespacedPods{Namespaces: *sel("ns", testNamespaces[r.IntN(3)]), Pods: *sel("pod", testPods[r.IntN(3)])}}
}

func randomAdminRule(r *rand.Rand, d Direction, actions []Action) AdminRule {
	rule := AdminRule{Action: actions[r.IntN(len(actions))]}
	networks := false
	for range 1 + r.IntN(2) {
		switch r.IntN(4) {
		case 0:
			rule.Peers = append(rule.Peers, nsPeer("ns", testNamespaces[r.IntN(3)]))
		case 1:
			rule.Peers = append(rule.Peers, AdminPeer{Pods: &NamespacedPods{Pods: *sel("pod", testPods[r.IntN(3)])}})
		case 2:
			rule.Peers = append(rule.Peers, AdminPeer{Pods: &NamespacedPods{Namespaces: *sel("ns", testNamespaces[r.IntN(3)]), Pods: *sel("role", "db")}})
		case 3:
			switch {
			case d == Egress && r.IntN(2) == 0:
				networks = true
				rule.Peers = append(rule.Peers, AdminPeer{Networks: []netip.Prefix{pfx(fmt.Sprintf("10.244.%d.0/25", r.IntN(2))), pfx("fd00:244::/48")}})
			case d == Egress:
				networks = true
				rule.Peers = append(rule.Peers, AdminPeer{Nodes: sel("zone", fmt.Sprintf("z%d", r.IntN(2)))})
			default:
				rule.Peers = append(rule.Peers, AdminPeer{Namespaces: &Selector{}})
			}
		}
	}
	for range r.IntN(3) {
		proto := testProtos[r.IntN(2)]
		switch r.IntN(3) {
		case 0:
			rule.Ports = append(rule.Ports, Port{Protocol: proto, Port: testPorts[r.IntN(2)]})
		case 1:
			rule.Ports = append(rule.Ports, Port{Protocol: proto, Port: 80, EndPort: 81})
		case 2:
			if !networks {
				rule.Ports = append(rule.Ports, Port{Protocol: proto, Name: fmt.Sprintf("serve-%d-%s", testPorts[r.IntN(2)], strings.ToLower(string(proto)))})
			}
		}
	}
	return rule
}

// TestAdminRulesPerPodConstant: the first packet of a connection to a pod
// that one admin policy selects meets the same number of rules whether
// 1, 100 or 1000 admin policies select other local pods; a node with no
// admin or baseline policy keeps the NetworkPolicy table unchanged.
func TestAdminRulesPerPodConstant(t *testing.T) {
	var evaluated, tableRules []int
	for _, n := range []int{1, 100, 1000} {
		w := newWorld(0)
		w.admins = []AdminPolicy{{Name: "web", Priority: 1, Subject: AdminSubject{Pods: &NamespacedPods{Namespaces: *sel("ns", "x"), Pods: *sel("pod", "a")}},
			Ingress: []AdminRule{{Action: Allow, Peers: []AdminPeer{podsPeer("x", "b")}, Ports: []Port{{Port: 80}}}, {Action: Deny, Peers: []AdminPeer{nsPeer()}}}}}
		for i := range n - 1 {
			w.pods = append(w.pods, Pod{Name: Name{"y", fmt.Sprintf("other-%d", i)}, Labels: map[string]string{"app": fmt.Sprintf("app-%d", i)},
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)})}, Local: true})
			w.admins = append(w.admins, AdminPolicy{Name: fmt.Sprintf("other-%d", i), Priority: int32(i % 1000),
				Subject: AdminSubject{Pods: &NamespacedPods{Pods: *sel("app", fmt.Sprintf("app-%d", i))}},
				Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{podsPeer("x", "b")}, Ports: []Port{{Port: uint16(1000 + i)}}}}})
		}
		e, rec := recorded(t)
		load(t, e, w)
		for _, p := range []struct {
			dport uint16
			want  bool
		}{{80, true}, {81, false}} {
			ok, rules, err := rec.trace(packet{src: podAddr("x", "b", false), dst: podAddr("x", "a", false), proto: TCP, dport: p.dport})
			if err != nil || ok != p.want {
				t.Fatalf("%d admin policies, port %d: allowed %v, %v", n, p.dport, ok, err)
			}
			if p.dport == 80 {
				evaluated = append(evaluated, rules)
			}
		}
		tableRules = append(tableRules, rec.rules())
	}
	t.Logf("rules evaluated for the first packet with 1, 100, 1000 admin policies: %v; rules in the table: %v", evaluated, tableRules)
	if evaluated[0] != evaluated[1] || evaluated[0] != evaluated[2] {
		t.Errorf("rules evaluated %v: grow with admin policies selecting other pods", evaluated)
	}
}

// TestAdminDenyCounted: a packet an admin Deny drops and one a baseline
// Deny drops are counted in the direction's denied counter, as those no
// NetworkPolicy allowed are; an admin Allow is not.
func TestAdminDenyCounted(t *testing.T) {
	w := newWorld(0)
	w.admins = []AdminPolicy{{Name: "no-y", Subject: nsSubject("ns", "x"),
		Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{nsPeer("ns", "y")}}, {Action: Allow, Peers: []AdminPeer{nsPeer("ns", "z")}}}}}
	w.baselines = []BaselinePolicy{{Name: "default", Subject: nsSubject("ns", "x"), Egress: []AdminRule{{Action: Deny, Peers: []AdminPeer{nsPeer("ns", "z")}}}}}
	e, rec := recorded(t)
	load(t, e, w)
	for _, p := range []struct {
		src, dst string
		want     bool
	}{{"y/a", "x/a", false}, {"z/a", "x/a", true}, {"x/a", "z/b", false}, {"x/a", "y/b", true}} {
		s, d := w.pod(p.src), w.pod(p.dst)
		if ok, _, err := rec.trace(packet{src: s.IPs[0], dst: d.IPs[0], proto: TCP, dport: 80}); err != nil || ok != p.want {
			t.Errorf("%s -> %s: allowed %v, %v; want %v", p.src, p.dst, ok, err, p.want)
		}
	}
	if in, eg, err := e.Denied(context.Background()); err != nil || in != 1 || eg != 1 {
		t.Errorf("Denied = %d ingress, %d egress, %v; want 1, 1", in, eg, err)
	}
}

// TestAdminNodesTraced: nodes peers match the selected nodes' addresses,
// on each node's table, in both families, as the reference says; the
// case discriminates (without its policies every probe passes).
func TestAdminNodesTraced(t *testing.T) {
	for node := range 2 {
		for _, v6 := range []bool{false, true} {
			w := newWorld(node)
			nodesCase(w)
			want := w.nodeExpected(v6)
			e, rec := recorded(t)
			load(t, e, w)
			got := map[probeKey]bool{}
			for k := range want {
				dst := nodeAddr(int(k.dst[len(k.dst)-1]-'0'), v6)
				ok, _, err := rec.trace(packet{src: w.pod(k.src).IPs[b2i(v6)], dst: dst, proto: k.proto, dport: k.port})
				must(t, err)
				got[k] = ok
			}
			if d := matrixDiff(got, want); len(d) > 0 {
				t.Errorf("node%d v6=%v: %d probes differ:\n%s", node, v6, len(d), strings.Join(d, "\n"))
			}
			w.admins, w.baselines, w.policies = nil, nil, nil
			if len(matrixDiff(want, w.nodeExpected(v6))) == 0 {
				t.Errorf("node%d v6=%v: the policies change nothing", node, v6)
			}
		}
	}
}
