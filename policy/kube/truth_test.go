package kube

import (
	"bufio"
	"net"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
)

// truthStep is one state of the world: the policies then in force, and
// the labels that differ from the world's own (restored at every step).
type truthStep struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	relabel  func(l *lab)
	ports    []int32 // probed; 80 and 81 when nil
}

// truthSteps are the upstream Netpol e2e tests' cases, in an order where
// one step changes the last one's policies (added, updated in place,
// deleted) or labels.
func truthSteps(l *lab) []truthStep {
	allowFromB := withIngress(netpol("x", "allow-from-b", match("pod", "a"), nil), peers(pods(match("pod", "b"))))
	fromZ := withIngress(netpol("y", "from-ns-z", nil, ingressOnly), peers(namespaces(match("ns", "z"))))
	return []truthStep{
		{name: "NoPolicy"},
		{name: "DenyAllIngress", policies: ps(netpol("x", "deny", nil, ingressOnly))},
		{name: "DenyAllEgress (updated in place)", policies: ps(netpol("x", "deny", nil, egressOnly))},
		{name: "DenyAll", policies: ps(netpol("x", "deny", nil, bothTypes))},
		{name: "AllowAllIngressTakesPrecedence", policies: ps(netpol("x", "deny", nil, ingressOnly),
			withIngress(netpol("x", "allow-all", nil, nil), nil))},
		{name: "AllowAllEgressTakesPrecedence", policies: ps(netpol("x", "deny", nil, egressOnly),
			withEgress(netpol("x", "allow-all", nil, egressOnly), nil))},
		{name: "DenyFromOtherNamespaces", policies: ps(withIngress(netpol("x", "same-ns", nil, nil), peers(pods(match()))))},
		{name: "AllowFromPodSelector", policies: ps(allowFromB)},
		{name: "PodRelabelledIntoPeerSelector", policies: ps(allowFromB), relabel: func(l *lab) { l.labelPod("x/c", map[string]string{"pod": "b"}) }},
		{name: "PodRelabelledOutOfPeerSelector", policies: ps(allowFromB), relabel: func(l *lab) { l.labelPod("x/b", map[string]string{"pod": "none"}) }},
		{name: "PodRelabelledIntoPolicy", policies: ps(allowFromB), relabel: func(l *lab) { l.labelPod("x/b", map[string]string{"pod": "a"}) }},
		{name: "PodRelabelledOutOfPolicy", policies: ps(allowFromB), relabel: func(l *lab) { l.labelPod("x/a", map[string]string{"pod": "none"}) }},
		{name: "AllowFromPodsIn", policies: ps(withIngress(netpol("x", "any-of", nil, nil), peers(pods(expr("pod", metav1.LabelSelectorOpIn, "b", "c")))))},
		{name: "AllowFromNamespaceMatchExpressions", policies: ps(withIngress(netpol("x", "from-y", nil, nil), peers(namespaces(expr("ns", metav1.LabelSelectorOpIn, "y")))))},
		{name: "AllowFromNamespaceDefaultLabel", policies: ps(withIngress(netpol("x", "from-y", nil, nil), peers(namespaces(match(corev1.LabelMetadataName, l.kns("y"))))))},
		{name: "AllowFromAllNamespaces", policies: ps(withIngress(netpol("x", "from-all", match("pod", "a"), nil), peers(namespaces(match()))))},
		{name: "NamespaceSelector", policies: ps(fromZ)},
		{name: "NamespaceRelabelledIntoSelector", policies: ps(fromZ), relabel: func(l *lab) { l.labelNamespace("x", map[string]string{"ns": "z"}) }},
		{name: "NamespaceRelabelledOutOfSelector", policies: ps(fromZ), relabel: func(l *lab) { l.labelNamespace("z", map[string]string{"ns": "q"}) }},
		{name: "PodAndNamespaceSelector", policies: ps(withIngress(netpol("x", "and", match("pod", "a"), nil),
			peers(podsIn(match("ns", "y"), match("pod", "b")))))},
		{name: "PodOrNamespaceSelector", policies: ps(withIngress(netpol("x", "or", match("pod", "a"), nil),
			peers(namespaces(match("ns", "y")), pods(match("pod", "b")))))},
		{name: "MultiplePodAndNamespaceSelectors", policies: ps(withIngress(netpol("x", "multi", match("pod", "a"), nil),
			peers(podsIn(expr("ns", metav1.LabelSelectorOpNotIn, "x"), expr("pod", metav1.LabelSelectorOpIn, "b", "c")))))},
		{name: "IPBlockExcept", policies: ps(withEgress(withIngress(netpol("x", "block", match("pod", "a"), bothTypes),
			peers(cidr("10.244.0.0/16", "10.244.0.16/28"))),
			peers(cidr("10.244.1.0/24", "10.244.1.32/32"))))},
		{name: "IPBlockOverlappingExcept", policies: ps(
			withIngress(netpol("x", "block", match("pod", "a"), nil), peers(cidr("10.244.0.0/16", "10.244.0.20/31"))),
			withIngress(netpol("x", "exactly", match("pod", "a"), nil), peers(cidr("10.244.0.20/32"))))},
		{name: "NamedPorts", policies: ps(
			withIngress(netpol("x", "named-in", match("pod", "a"), nil), nil, named("", "serve-81-tcp")),
			withEgress(netpol("x", "named-out", match("pod", "b"), egressOnly), nil, named(udp, "serve-80-udp")),
			withIngress(netpol("y", "web", nil, nil), nil, named(tcp, "web")))},
		{name: "NamedPortOfAnotherProtocol", policies: ps(withIngress(netpol("x", "named", nil, nil), nil, named("", "serve-80-udp")))},
		{name: "EndPort", policies: ps(withIngress(netpol("x", "range", match("pod", "a"), nil), nil,
			portRange(tcp, 79, 80), portRange(udp, 81, 90)))},
		// Overlapping port ranges in one rule, which the compiler merges:
		// the kernel refuses overlapping elements, and elements keyed by
		// their first port would replace each other.
		{name: "OverlappingPortRanges", policies: ps(withIngress(netpol("x", "overlap", match("pod", "a"), nil), nil,
			portRange(tcp, 1, 81), anyPort(tcp)))},
		{name: "PortRangesStartingAlike", policies: ps(withIngress(netpol("x", "same-start", match("pod", "a"), nil), nil,
			portRange(tcp, 80, 81), port(tcp, 80)))},
		{name: "PortsAndProtocol", policies: ps(withIngress(netpol("x", "udp-or-81", nil, nil), peers(namespaces(match("ns", "y"))),
			anyPort(udp), port(tcp, 81)))},
		{name: "SCTPIsNotTCP", policies: ps(withIngress(netpol("x", "sctp", nil, nil), nil, port(sctp, 80), portRange(sctp, 81, 81)))},
		{name: "EgressToDNSOnly", ports: []int32{80, 53}, policies: ps(withEgress(netpol("x", "dns", nil, egressOnly), nil, port(udp, 53), port(tcp, 53)))},
		{name: "EgressToPodInNamespace", policies: ps(withEgress(netpol("x", "to-y-b", nil, egressOnly),
			peers(podsIn(match("ns", "y"), match("pod", "b")))))},
		{name: "EgressDeniedOnClientSide", policies: ps(
			withEgress(netpol("x", "not-to-y", match("pod", "a"), egressOnly), peers(namespaces(expr("ns", metav1.LabelSelectorOpNotIn, "y")))),
			withIngress(netpol("y", "from-x", nil, nil), peers(namespaces(match("ns", "x")))))},
		{name: "StackedPolicies", policies: ps(
			netpol("x", "deny", nil, ingressOnly),
			withIngress(netpol("x", "z-on-80", match("pod", "a"), nil), peers(namespaces(match("ns", "z"))), port(tcp, 80)),
			withIngress(netpol("x", "udp", expr("pod", metav1.LabelSelectorOpExists), nil), nil, anyPort(udp)))},
		{name: "PolicyDeleted"},
	}
}

func ps(p ...*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy { return p }

// TestTruthTablesThroughAPI: for every case of the upstream Netpol e2e
// tests, the policies and labels are written through a real API server,
// and two nodes, each with its enforcer fed by a Source, converge to the
// truth table the oracle writes from the API objects: 9 pods × 9 pods ×
// TCP and UDP × ports 80 and 81, every pair probed with real traffic.
func TestTruthTablesThroughAPI(t *testing.T) {
	l := newLab(t, "truth")
	for _, s := range truthSteps(l) {
		t.Run(s.name, func(t *testing.T) {
			l.t = t
			l.setPolicies(s.policies...)
			l.resetLabels()
			if s.relabel != nil {
				s.relabel(l)
			}
			l.converge(t, s.ports)
		})
	}
}

// TestEstablishedConnectionsThroughAPI: policies added and removed while
// connections exist. An established connection (from a pod on the other
// node, and from one on the same bridge) keeps working when a policy that
// denies it is added, at either end, while new connections are refused;
// and once the policy is deleted, new ones pass again.
func TestEstablishedConnectionsThroughAPI(t *testing.T) {
	l := newLab(t, "est")
	server := netip.AddrPortFrom(podAddr("x", "a"), 7000)
	echoServer(t, l.pods["x/a"], server)
	l.converge(t, []int32{80})
	var conns []net.Conn
	for _, client := range []string{"y/c", "x/b"} {
		conn, err := dial(l.pods[client], server, 5*time.Second)
		must(t, err)
		t.Cleanup(func() { conn.Close() })
		conns = append(conns, conn)
	}
	roundTrips := func(msg string) {
		t.Helper()
		for _, c := range conns {
			roundTrip(t, c, msg)
		}
	}
	refused := func(client string) {
		t.Helper()
		if c, err := dial(l.pods[client], server, probeTimeout); err == nil {
			c.Close()
			t.Errorf("a new connection from %s to x/a passed the policies", client)
		}
	}
	roundTrips("before")

	l.setPolicies(netpol("x", "deny", nil, ingressOnly))
	l.converge(t, []int32{80})
	refused("y/c")
	refused("x/b")
	roundTrips("ingress denied")

	l.setPolicies(netpol("y", "deny", nil, egressOnly), netpol("x", "deny", match("pod", "b"), egressOnly))
	l.converge(t, []int32{80})
	refused("y/c")
	refused("x/b")
	roundTrips("egress denied")

	l.setPolicies()
	l.converge(t, []int32{80})
	roundTrips("policies deleted")
	c, err := dial(l.pods["y/c"], server, 5*time.Second)
	must(t, err)
	c.Close()
}

func dial(ns *netns.NS, ap netip.AddrPort, timeout time.Duration) (conn net.Conn, err error) {
	err = ns.Do(func() error {
		conn, err = net.DialTimeout("tcp", ap.String(), timeout)
		return err
	})
	return conn, err
}

func roundTrip(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("established connection from %s, %s: got %q, %v", conn.LocalAddr(), msg, line, err)
	}
}

// echoServer serves, in ns on ap, TCP connections that echo every line
// back and stay open until the client ends them.
func echoServer(t *testing.T, ns *netns.NS, ap netip.AddrPort) {
	t.Helper()
	srv, err := probe.ServeEcho(ns, ap, "")
	must(t, err)
	t.Cleanup(func() { srv.Close() })
}
