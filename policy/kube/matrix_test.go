package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/netns/nstest/probe"
)

// probeKey is one cell of a truth table: a new connection from pod src to
// pod dst ("x/a") on proto and port.
type probeKey struct {
	src, dst string
	proto    corev1.Protocol
	port     int32
}

var labProtos = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}

// Probe timeouts: a denied TCP SYN or UDP datagram is dropped, so a
// denied probe costs its whole timeout; a probe that differs from the
// oracle is asked again with the longer one before it counts.
const (
	probeTimeout = 250 * time.Millisecond
	retryTimeout = time.Second
	convergeFor  = 20 * time.Second
)

// snapshot reads the lab's namespaces, pods and policies from the API
// server: the oracle's input.
func (l *lab) snapshot() *snapshot {
	t, ctx := l.t, context.Background()
	s := &snapshot{namespaces: map[string]*corev1.Namespace{}}
	for _, short := range labNamespaces {
		ns, err := l.cs.CoreV1().Namespaces().Get(ctx, l.kns(short), metav1.GetOptions{})
		must(t, err)
		s.namespaces[ns.Name] = ns
		pods, err := l.cs.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		must(t, err)
		for i := range pods.Items {
			s.pods = append(s.pods, &pods.Items[i])
		}
		nps, err := l.cs.NetworkingV1().NetworkPolicies(ns.Name).List(ctx, metav1.ListOptions{})
		must(t, err)
		for i := range nps.Items {
			s.policies = append(s.policies, &nps.Items[i])
		}
	}
	return s
}

// short returns the world's name of pod p, "x/a".
func (l *lab) short(p *corev1.Pod) string {
	return strings.TrimPrefix(p.Namespace, l.tag+"-") + "/" + p.Name
}

// expected returns the oracle's truth table for s over every pair of pods
// (the ports 80 and 81 when ports is nil).
func (l *lab) expected(s *snapshot, ports []int32) map[probeKey]bool {
	if ports == nil {
		ports = []int32{80, 81}
	}
	ep := func(p *corev1.Pod) endpoint { return endpoint{p, netip.MustParseAddr(p.Status.PodIPs[0].IP)} }
	out := map[probeKey]bool{}
	for _, src := range s.pods {
		for _, dst := range s.pods {
			for _, proto := range labProtos {
				for _, port := range ports {
					out[probeKey{l.short(src), l.short(dst), proto, port}] = s.allowed(ep(src), ep(dst), proto, port)
				}
			}
		}
	}
	return out
}

// observe probes every key, concurrently, once each.
func (l *lab) observe(keys []probeKey, timeout time.Duration) map[probeKey]bool {
	got := make(map[probeKey]bool, len(keys))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 40)
	for _, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ns, name, _ := strings.Cut(k.dst, "/")
			dst := netip.AddrPortFrom(podAddr(ns, name), uint16(k.port))
			r, err := probe.Ask(l.pods[k.src], strings.ToLower(string(k.proto)), dst, timeout)
			mu.Lock()
			got[k] = err == nil && r.Name == k.dst
			mu.Unlock()
		}()
	}
	wg.Wait()
	return got
}

func differing(got, want map[probeKey]bool) []probeKey {
	var out []probeKey
	for k, w := range want {
		if got[k] != w {
			out = append(out, k)
		}
	}
	return out
}

// converge probes until the traffic matches the oracle's truth table for
// the API objects as they are now, in two rounds in a row (so that a
// table still on its way to a wrong state does not pass), or fails t
// after convergeFor with the differences.
func (l *lab) converge(t *testing.T, ports []int32) {
	t.Helper()
	s := l.snapshot()
	want := l.expected(s, ports)
	keys := make([]probeKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	deadline := time.Now().Add(convergeFor)
	for matched := 0; matched < 2; {
		got := l.observe(keys, probeTimeout)
		if bad := differing(got, want); len(bad) > 0 {
			for k, v := range l.observe(bad, retryTimeout) {
				got[k] = v
			}
		}
		if bad := differing(got, want); len(bad) > 0 {
			matched = 0
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d probes differ from the oracle after %v:\n%s\npolicies:\n%s", len(bad), len(want), convergeFor, l.render(got, want), describe(s))
			}
			continue
		}
		matched++
	}
}

// render draws a grid per protocol and port that has differences: rows
// are sources, columns destinations; + and - are connections allowed and
// denied as the oracle says, A one allowed that it denies, D one denied
// that it allows.
func (l *lab) render(got, want map[probeKey]bool) string {
	var names []string
	for _, ns := range labNamespaces {
		for _, p := range labPods {
			names = append(names, ns+"/"+p)
		}
	}
	type pp struct {
		proto corev1.Protocol
		port  int32
	}
	var planes []pp
	for _, k := range differing(got, want) {
		if !slices.Contains(planes, pp{k.proto, k.port}) {
			planes = append(planes, pp{k.proto, k.port})
		}
	}
	slices.SortFunc(planes, func(a, b pp) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	var b strings.Builder
	for _, p := range planes {
		fmt.Fprintf(&b, "%s/%d (rows from, columns to; +/- as the oracle says; A allowed but denied by the oracle, D denied but allowed by it):\n    ", p.proto, p.port)
		for _, n := range names {
			fmt.Fprintf(&b, " %s", n)
		}
		b.WriteString("\n")
		for _, src := range names {
			b.WriteString(src)
			for _, dst := range names {
				k := probeKey{src, dst, p.proto, p.port}
				mark := map[[2]bool]string{{true, true}: "+", {false, false}: "-", {true, false}: "A", {false, true}: "D"}[[2]bool{got[k], want[k]}]
				fmt.Fprintf(&b, "   %s", mark)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// describe lists the policies of s as JSON, to reproduce a failure.
func describe(s *snapshot) string {
	var b strings.Builder
	for _, np := range s.policies {
		spec, _ := json.Marshal(np.Spec)
		fmt.Fprintf(&b, "  %s/%s %s\n", np.Namespace, np.Name, spec)
	}
	if len(s.policies) == 0 {
		b.WriteString("  (none)\n")
	}
	for _, ns := range s.namespaces {
		fmt.Fprintf(&b, "  namespace %s %v\n", ns.Name, ns.Labels)
	}
	for _, p := range s.pods {
		fmt.Fprintf(&b, "  pod %s/%s %v\n", p.Namespace, p.Name, p.Labels)
	}
	return b.String()
}
