package kube

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Environment variables of the generated cases.
const (
	seedEnv  = "PODNET_NETPOL_SEED"  // the generator's seed; a new one each run when unset
	casesEnv = "PODNET_NETPOL_CASES" // how many cases; 10 when unset
)

// TestGeneratedPoliciesThroughAPI: policy sets no test was written for.
// A seeded generator draws policies from the world's labels, namespaces,
// ports, port names and address ranges (selectors of every operator,
// peers of every kind, ports numbered, named, ranged or protocol-only,
// every policyTypes form), sometimes relabels a pod or a namespace, and
// writes them through the API server; the two nodes must converge to the
// oracle's truth table for them. The seed is logged; set it in
// PODNET_NETPOL_SEED to run the same cases again.
func TestGeneratedPoliciesThroughAPI(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(seedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", seedEnv, err)
		}
	}
	n := 10
	if s := os.Getenv(casesEnv); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatalf("%s: %v", casesEnv, err)
		}
	}
	t.Logf("generator seed %d (rerun with %s=%d)", seed, seedEnv, seed)
	l := newLab(t, "gen")
	g := gen{rand.New(rand.NewPCG(seed, 0)), l}
	for i := range n {
		c := g.policySet(i)
		t.Run(fmt.Sprintf("case%d", i), func(t *testing.T) {
			l.t = t
			l.setPolicies(c.policies...)
			l.resetLabels()
			for _, f := range c.relabel {
				f(l)
			}
			l.converge(t, nil)
		})
	}
}

// gen draws policies from the world.
type gen struct {
	r *rand.Rand
	l *lab
}

type genCase struct {
	policies []*networkingv1.NetworkPolicy
	relabel  []func(*lab)
}

func (g gen) pick(n int) int { return g.r.IntN(n) }

func (g gen) chance(p float64) bool { return g.r.Float64() < p }

func pickOf[T any](g gen, from ...T) T { return from[g.pick(len(from))] }

// policySet draws one to three policies, and perhaps a pod or namespace
// with other labels.
func (g gen) policySet(i int) genCase {
	var c genCase
	for j := range 1 + g.pick(3) {
		c.policies = append(c.policies, g.policy(fmt.Sprintf("gen-%d-%d", i, j)))
	}
	if g.chance(0.3) {
		name := pickOf(g, labNamespaces...) + "/" + pickOf(g, labPods...)
		labels := map[string]string{"pod": pickOf(g, "a", "b", "c", "d")}
		c.relabel = append(c.relabel, func(l *lab) { l.labelPod(name, labels) })
	}
	if g.chance(0.2) {
		ns, labels := pickOf(g, labNamespaces...), map[string]string{"ns": pickOf(g, "x", "y", "z", "w")}
		c.relabel = append(c.relabel, func(l *lab) { l.labelNamespace(ns, labels) })
	}
	return c
}

func (g gen) policy(name string) *networkingv1.NetworkPolicy {
	np := netpol(pickOf(g, labNamespaces...), name, g.podSelector(), nil)
	ingress, egress := g.pick(3), g.pick(3)
	for range ingress {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
	}
	for range egress {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
	}
	// Absent policyTypes default from the rules; a listed type whose rules
	// are absent denies, and rules of a type not listed are ignored.
	switch g.pick(4) {
	case 1:
		np.Spec.PolicyTypes = ingressOnly
	case 2:
		np.Spec.PolicyTypes = egressOnly
	case 3:
		np.Spec.PolicyTypes = bothTypes
	}
	return np
}

// selector draws a label selector over key with the given values (and
// some no object has).
func (g gen) selector(key string, values ...string) *metav1.LabelSelector {
	values = append(values, "none")
	v := func() string { return pickOf(g, values...) }
	switch g.pick(7) {
	case 0:
		return match()
	case 1, 2:
		return match(key, v())
	case 3:
		return expr(key, metav1.LabelSelectorOpIn, v(), v())
	case 4:
		return expr(key, metav1.LabelSelectorOpNotIn, v())
	case 5:
		return expr(pickOf(g, key, "other"), pickOf(g, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist))
	default:
		s := match(key, v())
		s.MatchExpressions = expr(key, metav1.LabelSelectorOpNotIn, v()).MatchExpressions
		return s
	}
}

func (g gen) podSelector() *metav1.LabelSelector { return g.selector("pod", labPods...) }

func (g gen) namespaceSelector() *metav1.LabelSelector {
	if g.chance(0.25) {
		return g.selector(corev1.LabelMetadataName, g.l.kns("x"), g.l.kns("y"), g.l.kns("z"))
	}
	return g.selector("ns", labNamespaces...)
}

// peers draws none (every peer) to two peers.
func (g gen) peers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range g.pick(3) {
		switch g.pick(4) {
		case 0:
			out = append(out, pods(g.podSelector()))
		case 1:
			out = append(out, namespaces(g.namespaceSelector()))
		case 2:
			out = append(out, podsIn(g.namespaceSelector(), g.podSelector()))
		default:
			out = append(out, g.ipBlock())
		}
	}
	return out
}

// ipBlock draws a CIDR holding some of the pods (or all addresses) and
// excepts strictly inside it.
func (g gen) ipBlock() networkingv1.NetworkPolicyPeer {
	pod := func() netip.Prefix {
		return netip.PrefixFrom(podAddr(pickOf(g, labNamespaces...), pickOf(g, labPods...)), 32)
	}
	blocks := []netip.Prefix{pfx("0.0.0.0/0"), pfx("10.244.0.0/16"), pfx("10.244.0.0/24"), pfx("10.244.1.0/24"), pfx("10.244.0.16/28"), pfx("10.244.1.0/27"), pod()}
	block := pickOf(g, blocks...)
	var except []string
	for range g.pick(3) {
		e := pickOf(g, append(blocks, pod(), pod())...)
		if e.Bits() > block.Bits() && block.Contains(e.Addr()) {
			except = append(except, e.String())
		}
	}
	return cidr(block.String(), except...)
}

// ports draws none (every port) to two ports.
func (g gen) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range g.pick(3) {
		proto := pickOf(g, tcp, udp, tcp, udp, sctp)
		var p networkingv1.NetworkPolicyPort
		switch g.pick(5) {
		case 0:
			p = anyPort(proto)
		case 1:
			p = port(proto, pickOf[int32](g, 80, 81, 53, 8080))
		case 2:
			p = portRange(proto, pickOf[int32](g, 1, 79, 80, 81), pickOf[int32](g, 81, 90, 65535))
		default:
			p = named(proto, pickOf(g, portName(80, tcp), portName(81, tcp), portName(80, udp), portName(81, udp), "web", "serve-82-tcp"))
		}
		if proto == tcp && g.chance(0.5) {
			p.Protocol = nil // TCP by default
		}
		out = append(out, p)
	}
	return out
}
