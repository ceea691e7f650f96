package policy

import (
	"fmt"
	"net/netip"
	"slices"
)

// The upstream netpol e2e model: namespaces x, y and z with pods a, b
// and c each, serving TCP and UDP on ports 80 and 81 (named
// serve-80-tcp …). Pods a and b run on node0 (10.244.0.0/24), c on node1
// (10.244.1.0/24); every pod has an IPv6 address too.

var (
	testNamespaces = []string{"x", "y", "z"}
	testPods       = []string{"a", "b", "c"}
	testPorts      = []uint16{80, 81}
	testProtos     = []Protocol{TCP, UDP}
)

// podAddr returns the address of pod ns/name: 10.244.N.(10*ns+pod) with
// N the node, and fd00:244:N::same.
func podAddr(ns, name string, v6 bool) netip.Addr {
	i := slices.Index(testNamespaces, ns)
	j := slices.Index(testPods, name)
	node := 0
	if name == "c" {
		node = 1
	}
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:244:%d::%d", node, 10*(i+1)+j))
	}
	return netip.AddrFrom4([4]byte{10, 244, byte(node), byte(10*(i+1) + j)})
}

func nsLabels(ns string) map[string]string {
	return map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}
}

// newWorld returns the model's pods and namespaces, with no policy;
// node is the node whose pods are local.
func newWorld(node int) *world {
	w := &world{namespaces: map[string]Namespace{}}
	for _, ns := range testNamespaces {
		w.namespaces[ns] = Namespace{Name: ns, Labels: nsLabels(ns)}
		for _, p := range testPods {
			pod := Pod{Name: Name{ns, p}, Labels: map[string]string{"pod": p},
				IPs:   []netip.Addr{podAddr(ns, p, false), podAddr(ns, p, true)},
				Local: (p == "c") == (node == 1)}
			for _, port := range []uint16{80, 81, 53} {
				for _, proto := range testProtos {
					pod.Ports = append(pod.Ports, ContainerPort{Name: fmt.Sprintf("serve-%d-%s", port, map[Protocol]string{TCP: "tcp", UDP: "udp"}[proto]), Protocol: proto, Port: port})
				}
			}
			w.pods = append(w.pods, pod)
		}
	}
	for i := range 2 {
		w.nodes = append(w.nodes, Node{Name: fmt.Sprintf("node%d", i), Labels: map[string]string{"kubernetes.io/hostname": fmt.Sprintf("node%d", i), "zone": fmt.Sprintf("z%d", i)},
			IPs: []netip.Addr{nodeAddr(i, false), nodeAddr(i, true)}})
	}
	w.enforced = func(p *Pod) bool { return p.Local }
	return w
}

// nodeAddr is node i's address on the link between the nodes.
func nodeAddr(i int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:240::1%d", i))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.240.0.1%d", i))
}

func (w *world) pod(name string) *Pod {
	for i := range w.pods {
		if w.pods[i].Name.String() == name {
			return &w.pods[i]
		}
	}
	panic("no pod " + name)
}

func sel(kv ...string) *Selector {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &Selector{MatchLabels: m}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// policyCase is one upstream-style case: the policies it adds, the ports
// it probes (80 and 81 when nil).
type policyCase struct {
	name     string
	policies []Policy
	ports    []uint16
}

// policyCases mirror the upstream Netpol e2e tests' policies.
func policyCases() []policyCase {
	x := func(name string) Name { return Name{"x", name} }
	return []policyCase{
		{name: "DenyAllIngress", policies: []Policy{{Name: x("deny"), Types: Ingress}}},
		{name: "DenyAllEgress", policies: []Policy{{Name: x("deny"), Types: Egress}}},
		{name: "AllowFromPodSelector", policies: []Policy{{Name: x("allow-b"), PodSelector: *sel("pod", "a"), Types: Ingress,
			Ingress: []Rule{{Peers: []Peer{{Pods: sel("pod", "b")}}}}}}},
		{name: "AllowFromNamespaceSelector", policies: []Policy{{Name: x("allow-y"), Types: Ingress,
			Ingress: []Rule{{Peers: []Peer{{Namespaces: &Selector{Expressions: []Requirement{{Key: "ns", Operator: OpIn, Values: []string{"y"}}}}}}}}}}},
		{name: "PodAndNamespaceSelector", policies: []Policy{{Name: x("and"), PodSelector: *sel("pod", "a"), Types: Ingress,
			Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "y"), Pods: sel("pod", "b")}}}}}}},
		{name: "PodOrNamespaceSelector", policies: []Policy{{Name: x("or"), PodSelector: *sel("pod", "a"), Types: Ingress,
			Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "y")}, {Pods: sel("pod", "b")}}}}}}},
		{name: "IPBlockExcept", policies: []Policy{{Name: x("block"), PodSelector: *sel("pod", "a"), Types: Ingress | Egress,
			Ingress: []Rule{{Peers: []Peer{{IPBlock: &IPBlock{CIDR: pfx("10.244.0.0/16"), Except: []netip.Prefix{pfx("10.244.0.16/28")}}}}}},
			Egress:  []Rule{{Peers: []Peer{{IPBlock: &IPBlock{CIDR: pfx("10.244.1.0/24"), Except: []netip.Prefix{pfx("10.244.1.32/32")}}}}}}}}},
		{name: "NamedPorts", policies: []Policy{
			{Name: x("named-in"), PodSelector: *sel("pod", "a"), Types: Ingress, Ingress: []Rule{{Ports: []Port{{Name: "serve-81-tcp"}}}}},
			{Name: x("named-out"), PodSelector: *sel("pod", "b"), Types: Egress, Egress: []Rule{{Ports: []Port{{Protocol: UDP, Name: "serve-80-udp"}}}}},
		}},
		{name: "EndPort", policies: []Policy{{Name: x("range"), PodSelector: *sel("pod", "a"), Types: Ingress,
			Ingress: []Rule{{Ports: []Port{{Port: 79, EndPort: 80}, {Protocol: UDP, Port: 81, EndPort: 90}}}}}}},
		// Ranges of one rule that overlap, or start at the same port, are
		// one interval each in the kernel's set, which refuses overlaps.
		{name: "OverlappingPorts", policies: []Policy{
			{Name: x("overlap"), PodSelector: *sel("pod", "a"), Types: Ingress, Ingress: []Rule{{Ports: []Port{{Port: 1, EndPort: 81}, {}}}}},
			{Name: x("same-start"), PodSelector: *sel("pod", "b"), Types: Ingress, Ingress: []Rule{{Ports: []Port{{Port: 80, EndPort: 81}, {Port: 80}, {Protocol: UDP, Port: 81}, {Protocol: UDP, Port: 80, EndPort: 80}}}}},
		}},
		{name: "EgressDNSOnly", ports: []uint16{80, 53}, policies: []Policy{{Name: x("dns"), Types: Egress,
			Egress: []Rule{{Ports: []Port{{Protocol: UDP, Port: 53}, {Protocol: TCP, Port: 53}}}}}}},
		{name: "BothDirections", policies: []Policy{
			{Name: x("to-y"), PodSelector: *sel("pod", "a"), Types: Egress, Egress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "y")}}}}},
			{Name: Name{"y", "not-from-x"}, PodSelector: *sel("pod", "b"), Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Namespaces: &Selector{Expressions: []Requirement{{Key: "ns", Operator: OpNotIn, Values: []string{"x"}}}}}}}}},
		}},
		{name: "StackedPolicies", policies: []Policy{
			{Name: x("deny"), Types: Ingress},
			{Name: x("allow-z-80"), PodSelector: *sel("pod", "a"), Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "z")}}, Ports: []Port{{Port: 80}}}}},
			{Name: x("allow-udp"), PodSelector: Selector{Expressions: []Requirement{{Key: "pod", Operator: OpExists}}}, Types: Ingress, Ingress: []Rule{{Ports: []Port{{Protocol: UDP}}}}},
		}},
	}
}

// expected returns the truth table the reference gives for w, over
// every pair of pods (IPv4 addresses, or IPv6 with v6).
func (w *world) expected(ports []uint16, v6 bool) map[probeKey]bool {
	if ports == nil {
		ports = testPorts
	}
	out := map[probeKey]bool{}
	for _, s := range w.pods {
		for _, d := range w.pods {
			if len(s.IPs) <= b2i(v6) || len(d.IPs) <= b2i(v6) {
				continue
			}
			for _, proto := range testProtos {
				for _, port := range ports {
					k := probeKey{s.Name.String(), d.Name.String(), proto, port}
					out[k] = w.refAllowed(s.IPs[b2i(v6)], d.IPs[b2i(v6)], proto, port)
				}
			}
		}
	}
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// adminCase is a case of AdminNetworkPolicies and
// BaselineAdminNetworkPolicies, with the NetworkPolicies they meet.
type adminCase struct {
	name      string
	admins    []AdminPolicy
	baselines []BaselinePolicy
	policies  []Policy
	ports     []uint16
}

func (tc *adminCase) apply(w *world) {
	w.admins, w.baselines, w.policies = tc.admins, tc.baselines, tc.policies
}

func nsSubject(kv ...string) AdminSubject { return AdminSubject{Namespaces: sel(kv...)} }

func podsPeer(ns, pod string) AdminPeer {
	return AdminPeer{Pods: &NamespacedPods{Namespaces: *sel("ns", ns), Pods: *sel("pod", pod)}}
}

func nsPeer(kv ...string) AdminPeer { return AdminPeer{Namespaces: sel(kv...)} }

// adminCases cover the three stages and how they meet: an admin Deny
// over a NetworkPolicy's allow, an admin Allow over a NetworkPolicy's
// deny and default deny, Pass to the NetworkPolicies and, when none
// isolates, to the baseline, priorities, a baseline under a
// NetworkPolicy, a baseline alone, ports of each kind and egress to
// networks.
func adminCases() []adminCase {
	x := func(name string) Name { return Name{"x", name} }
	all := AdminPeer{Namespaces: &Selector{}}
	return []adminCase{
		{name: "AdminDenyOverNetworkAllow",
			policies: []Policy{{Name: x("allow-all"), Types: Ingress, Ingress: []Rule{{}}}},
			admins: []AdminPolicy{{Name: "deny-from-y", Priority: 10, Subject: nsSubject("ns", "x"),
				Ingress: []AdminRule{{Name: "no-y", Action: Deny, Peers: []AdminPeer{nsPeer("ns", "y")}}}}}},
		{name: "AdminAllowOverNetworkDeny",
			policies: []Policy{{Name: x("deny"), Types: Ingress}, {Name: Name{"y", "deny-out"}, Types: Egress}},
			admins: []AdminPolicy{{Name: "allow-z-to-xa", Priority: 1,
				Subject: AdminSubject{Pods: &NamespacedPods{Namespaces: *sel("ns", "x"), Pods: *sel("pod", "a")}},
				Ingress: []AdminRule{{Action: Allow, Peers: []AdminPeer{nsPeer("ns", "z")}}}},
				{Name: "y-may-reach-z", Priority: 2, Subject: nsSubject("ns", "y"),
					Egress: []AdminRule{{Action: Allow, Peers: []AdminPeer{nsPeer("ns", "z")}}}}}},
		{name: "PassToNetworkPolicy",
			policies: []Policy{{Name: x("from-y-b"), Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "y"), Pods: sel("pod", "b")}}}}}},
			admins: []AdminPolicy{{Name: "pass-y-allow-rest", Priority: 100, Subject: nsSubject("ns", "x"),
				Ingress: []AdminRule{{Action: Pass, Peers: []AdminPeer{nsPeer("ns", "y")}}, {Action: Allow, Peers: []AdminPeer{all}}}}}},
		{name: "PassToBaseline",
			admins: []AdminPolicy{{Name: "pass-y", Priority: 100, Subject: nsSubject("ns", "x"),
				Ingress: []AdminRule{{Action: Pass, Peers: []AdminPeer{nsPeer("ns", "y")}}, {Action: Deny, Peers: []AdminPeer{all}, Ports: []Port{{Port: 81}, {Protocol: UDP, Port: 81}}}}}},
			baselines: []BaselinePolicy{{Name: "default", Subject: nsSubject("ns", "x"),
				Ingress: []AdminRule{{Action: Allow, Peers: []AdminPeer{{Pods: &NamespacedPods{Pods: *sel("pod", "a")}}}}, {Action: Deny, Peers: []AdminPeer{nsPeer("ns", "y")}}}}}},
		{name: "Priorities",
			policies: []Policy{{Name: x("deny"), Types: Ingress}},
			admins: []AdminPolicy{
				{Name: "low-allow-y", Priority: 20, Subject: nsSubject("ns", "x"), Ingress: []AdminRule{{Action: Allow, Peers: []AdminPeer{nsPeer("ns", "y")}}}},
				{Name: "high-deny-y-b", Priority: 5, Subject: nsSubject("ns", "x"), Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{podsPeer("y", "b")}}}},
				// Equal priorities apply in the order of their names.
				{Name: "tie-b-allow-z", Priority: 30, Subject: nsSubject("ns", "x"), Ingress: []AdminRule{{Action: Allow, Peers: []AdminPeer{nsPeer("ns", "z")}}}},
				{Name: "tie-a-deny-z-81", Priority: 30, Subject: nsSubject("ns", "x"), Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{nsPeer("ns", "z")}, Ports: []Port{{Port: 81}, {Protocol: UDP, Port: 81}}}}},
			}},
		{name: "BaselineUnderNetworkPolicy",
			policies:  []Policy{{Name: x("a-from-z"), PodSelector: *sel("pod", "a"), Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "z")}}}}}},
			baselines: []BaselinePolicy{{Name: "default", Subject: nsSubject("ns", "x"), Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{all}}}}}},
		{name: "BaselineDefaultDeny",
			baselines: []BaselinePolicy{{Name: "default", Subject: nsSubject("ns", "y"),
				Ingress: []AdminRule{{Action: Deny, Peers: []AdminPeer{all}}},
				Egress:  []AdminRule{{Action: Deny, Peers: []AdminPeer{all}}}}}},
		{name: "AdminPorts",
			policies: []Policy{{Name: x("deny"), Types: Ingress}},
			admins: []AdminPolicy{{Name: "ports", Priority: 50, Subject: nsSubject("ns", "x"),
				Ingress: []AdminRule{
					{Name: "number", Action: Allow, Peers: []AdminPeer{nsPeer("ns", "y")}, Ports: []Port{{Protocol: TCP, Port: 80}}},
					{Name: "named", Action: Allow, Peers: []AdminPeer{nsPeer("ns", "z")}, Ports: []Port{{Protocol: UDP, Name: "serve-81-udp"}}},
					{Name: "range", Action: Allow, Peers: []AdminPeer{podsPeer("x", "b"), podsPeer("x", "c")}, Ports: []Port{{Protocol: UDP, Port: 60, EndPort: 80}, {Port: 81, EndPort: 90}}},
				},
				Egress: []AdminRule{
					{Name: "named-out", Action: Deny, Peers: []AdminPeer{nsPeer("ns", "z")}, Ports: []Port{{Name: "serve-80-tcp"}}},
				}}}},
		{name: "EgressNetworks",
			policies: []Policy{{Name: x("a-no-egress"), PodSelector: *sel("pod", "a"), Types: Egress}},
			admins: []AdminPolicy{{Name: "networks", Priority: 0, Subject: nsSubject("ns", "x"),
				Egress: []AdminRule{
					{Action: Deny, Peers: []AdminPeer{{Networks: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:244:1::/64")}}}},
					{Action: Allow, Peers: []AdminPeer{{Networks: []netip.Prefix{pfx("10.244.0.16/28"), pfx("fd00:244::20/123")}}}, Ports: []Port{{Port: 80}, {Protocol: UDP, Port: 81}}},
				}}}},
	}
}

// nodesCase is admin and baseline policies with nodes peers: x's pods may
// reach the other node on TCP 80 only, and y's none of zone z1's (node1)
// unless no admin rule denies it; checked by probing, from every pod, the
// node it does not run on.
func nodesCase(w *world) {
	w.policies = []Policy{{Name: Name{"x", "no-egress"}, Types: Egress}}
	w.admins = []AdminPolicy{{Name: "nodes", Priority: 3, Subject: nsSubject("ns", "x"),
		Egress: []AdminRule{
			{Action: Deny, Peers: []AdminPeer{{Nodes: sel("zone", "z1")}}, Ports: []Port{{Protocol: UDP, Port: 80}}},
			{Action: Allow, Peers: []AdminPeer{{Nodes: &Selector{}}}, Ports: []Port{{Port: 80}, {Protocol: UDP, Port: 80}}},
		}}}
	w.baselines = []BaselinePolicy{{Name: "default", Subject: nsSubject("ns", "y"),
		Egress: []AdminRule{{Action: Deny, Peers: []AdminPeer{{Nodes: sel("zone", "z1")}}}}}}
}

// nodeExpected returns the reference's verdicts for every pod reaching
// the node it does not run on (its own node is never filtered), at its
// address on the link between them.
func (w *world) nodeExpected(v6 bool) map[probeKey]bool {
	out := map[probeKey]bool{}
	for _, s := range w.pods {
		other := 1
		if s.Name.Name == "c" {
			other = 0
		}
		for _, proto := range testProtos {
			for _, port := range testPorts {
				out[probeKey{s.Name.String(), fmt.Sprintf("node%d", other), proto, port}] = w.refAllowed(s.IPs[b2i(v6)], nodeAddr(other, v6), proto, port)
			}
		}
	}
	return out
}
