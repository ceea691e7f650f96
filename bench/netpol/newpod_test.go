package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/policy/cnisock"
)

var (
	allowedIP  = netip.MustParseAddr("10.244.0.30")
	intruderIP = netip.MustParseAddr("10.244.0.31")
	dbIP       = netip.MustParseAddr("10.244.0.32")
)

// newPodPeers are the pods around each new pod: a client the policy
// allows, one it denies, and a server (db) isolated by a policy that
// allows the new pods.
type newPodPeers struct {
	allowed, intruder *netns.NS
	db                netip.AddrPort
	e                 *policy.Enforcer // its denied counters tell a dropped SYN from a slow one
}

// BenchmarkNewPod follows a new pod as kubelet starts it, 10 times
// without and 10 times with the CNI plugin telling the enforcer the
// pod's addresses (package policy/cnisock, as podnet-bridge does with
// policySocket): its Pod object (scheduled to the node, no address yet)
// exists and a policy selects it, allowing only pods labelled
// role=allowed; another policy isolates a db pod, allowing pods labelled
// app=web, as the new pods are. Then CNI ADD (the veth, the address, the
// route: what podnet-bridge does; with the socket, the handoff and its
// wait), at once a server in the pod, and kubelet's status update with
// the pod's address through the API server. From the end of ADD, an
// allowed client and an intruder each connect to the pod, and the pod to
// the db, again and again (3 ms per dropped SYN) until the intruder is
// refused and the others got through. It reports when each first got
// through, how often the policies refused the allowed ones, when the
// intruder's first refused attempt began, and how many of the
// intruder's connections got through.
func BenchmarkNewPod(b *testing.B) {
	for b.Loop() {
		cs := client(b)
		nd := newNode(b)
		ctx := context.Background()
		must(b, createNamespace(ctx, cs, "newpod", nil))
		peers := newPodPeers{allowed: nd.addPod(allowedIP), intruder: nd.addPod(intruderIP), db: netip.AddrPortFrom(dbIP, 5432)}
		serve(b, nd.addPod(dbIP), peers.db)
		must(b, createPod(ctx, cs, "newpod", "allowed", nodeName, map[string]string{"role": "allowed"}, allowedIP))
		must(b, createPod(ctx, cs, "newpod", "intruder", nodeName, map[string]string{"role": "other"}, intruderIP))
		must(b, createPod(ctx, cs, "newpod", "db", nodeName, map[string]string{"app": "db"}, dbIP))
		for _, np := range []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *labels("app", "web"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: labels("role", "allowed")}}}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: *labels("app", "db"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: labels("app", "web")}}}}}},
		} {
			_, err := cs.NetworkingV1().NetworkPolicies("newpod").Create(ctx, np, metav1.CreateOptions{})
			must(b, err)
		}
		socket := filepath.Join(b.TempDir(), "policy.sock")
		peers.e, _, _, _ = startEnforcer(b, cs, nd, socket)
		window, _, _ := newPodRounds(b, cs, nd, peers, "")
		b.ReportMetric(window, "window-ms")
		_, through, wait := newPodRounds(b, cs, nd, peers, socket)
		b.ReportMetric(float64(through), "intruder-conns-socket")
		b.ReportMetric(wait, "add-wait-ms")
	}
}

// newPodRounds runs 10 rounds, with the handoff on socket unless it is
// "", prints their table and returns the median time until the intruder
// was refused, how many of its connections got through in all, and the
// median wait of ADD for the enforcer.
func newPodRounds(b *testing.B, cs kubernetes.Interface, nd *node, peers newPodPeers, socket string) (window float64, through int, wait float64) {
	if socket == "" {
		fmt.Printf("\nNew pod, without the policy socket: from the end of CNI ADD (kubelet's status update sent right after it)\n\n")
	} else {
		fmt.Printf("\nNew pod, with the policy socket: from the end of CNI ADD, which waited for the enforcer (status update as above)\n\n")
	}
	fmt.Printf("| round | ADD's wait for the enforcer | allowed client through | allowed refused | intruder refused from | intruder connections through | new pod → db through | new pod refused |\n|---|---|---|---|---|---|---|---|\n")
	var firstOK, refused, egress, handoff []float64
	base := 100
	if socket != "" {
		base = 120
	}
	for i := range 10 {
		r := newPodRound(b, cs, nd, base+i, peers, socket)
		fmt.Printf("| %d | %.1f ms | %.1f ms | %d | %.1f ms | %d | %.1f ms | %d |\n", i, r.handoff, r.allowedAt, r.allowedRefused, r.protectedAt, r.intruderThrough, r.egressAt, r.egressRefused)
		firstOK, refused, egress, handoff = append(firstOK, r.allowedAt), append(refused, r.protectedAt), append(egress, r.egressAt), append(handoff, r.handoff)
		through += r.intruderThrough
	}
	fmt.Printf("| median | %.1f ms | %.1f ms | | %.1f ms | | %.1f ms | |\n| max | %.1f ms | %.1f ms | | %.1f ms | | %.1f ms | |\n",
		median(handoff), median(firstOK), median(refused), median(egress), quantile(handoff, 1), quantile(firstOK, 1), quantile(refused, 1), quantile(egress, 1))
	fmt.Printf("\nIntruder connections through after ADD, all rounds: %d\n", through)
	return median(refused), through, median(handoff)
}

type podRound struct {
	handoff, allowedAt, protectedAt, egressAt      float64 // ms: the ADD's wait; after ADD
	allowedRefused, intruderThrough, egressRefused int
}

// newPodRound starts pod web-i at 10.244.0.i and probes until the
// intruder is refused and the allowed connections got through.
func newPodRound(b *testing.B, cs kubernetes.Interface, nd *node, i int, peers newPodPeers, socket string) podRound {
	ctx := context.Background()
	ip := netip.AddrFrom4([4]byte{10, 244, 0, byte(i)})
	name := fmt.Sprintf("web-%d", i)
	must(b, createPod(ctx, cs, "newpod", name, nodeName, map[string]string{"app": "web"}, netip.Addr{}))
	time.Sleep(200 * time.Millisecond) // the Pod reaches the enforcer before ADD, as it reaches kubelet
	pod := nd.addPod(ip)
	var r podRound
	if socket != "" {
		p, err := cs.CoreV1().Pods("newpod").Get(ctx, name, metav1.GetOptions{})
		must(b, err)
		t := time.Now()
		must(b, cnisock.Send(ctx, socket, cnisock.Request{Version: cnisock.Version, Op: cnisock.Add, ContainerID: "sandbox-" + name,
			Namespace: "newpod", Name: name, UID: string(p.UID), IPs: []netip.Addr{ip}}))
		r.handoff = ms(time.Since(t))
	}
	dst := netip.AddrPortFrom(ip, 8080)
	serve(b, pod, dst)
	added := time.Now()
	go func() {
		p, err := cs.CoreV1().Pods("newpod").Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}
			_, err = cs.CoreV1().Pods("newpod").UpdateStatus(ctx, p, metav1.UpdateOptions{})
		}
		if err != nil {
			b.Error(err)
		}
	}()
	probeNewPod(b, &r, added, peers, pod, dst)
	return r
}

// probeNewPod connects to and from the new pod until the intruder is
// refused and the allowed client and the pod got through. A connection
// counts as refused only when the policies dropped it (the enforcer's
// denied counters rose during the attempt); one that merely took longer
// than the 3 ms timeout (ARP for the new address on a busy machine) is
// tried again.
func probeNewPod(b *testing.B, r *podRound, added time.Time, peers newPodPeers, pod *netns.NS, dst netip.AddrPort) {
	try := func(from *netns.NS, to netip.AddrPort, at *float64, refused *int) {
		if *at != 0 {
			return
		}
		switch ok, denied := attempt(b, peers.e, from, to); {
		case ok:
			*at = ms(time.Since(added))
		case denied:
			*refused++
		}
	}
	for deadline := added.Add(30 * time.Second); r.protectedAt == 0 || r.allowedAt == 0 || r.egressAt == 0; {
		try(peers.allowed, dst, &r.allowedAt, &r.allowedRefused)
		if r.protectedAt == 0 {
			start := ms(time.Since(added))
			switch ok, denied := attempt(b, peers.e, peers.intruder, dst); {
			case ok:
				r.intruderThrough++
			case denied:
				r.protectedAt = start
			}
		}
		try(pod, peers.db, &r.egressAt, &r.egressRefused)
		if time.Now().After(deadline) {
			b.Fatalf("%v: after 30 s: %+v", dst, *r)
		}
	}
}

// attempt connects once from ns to ap, with a 3 ms timeout, and reports
// whether it got through, or else whether the policies dropped it.
func attempt(b *testing.B, e *policy.Enforcer, ns *netns.NS, ap netip.AddrPort) (ok, denied bool) {
	ctx := context.Background()
	in, eg, err := e.Denied(ctx)
	must(b, err)
	if connect(ns, ap, 3*time.Millisecond) {
		return true, false
	}
	in2, eg2, err := e.Denied(ctx)
	must(b, err)
	return false, in2+eg2 > in+eg
}
