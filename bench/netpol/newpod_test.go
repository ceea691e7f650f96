package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/netns"
)

var (
	allowedIP  = netip.MustParseAddr("10.244.0.30")
	intruderIP = netip.MustParseAddr("10.244.0.31")
)

// BenchmarkNewPod follows a new pod as kubelet starts it, 10 times: its
// Pod object (scheduled to the node, no address yet) exists and a policy
// selects it, allowing only pods labelled role=allowed; then CNI ADD (the
// veth, the address, the route: what podnet-bridge does) and at once a
// server in the pod; then kubelet's status update with the pod's address
// through the API server. From the end of ADD, an allowed client and an
// intruder each connect to the pod again and again (3 ms per dropped SYN)
// until the intruder is refused. It reports when the allowed client first
// got through, whether it was ever refused, how long the intruder got
// through, and how many of its connections did.
func BenchmarkNewPod(b *testing.B) {
	for b.Loop() {
		cs := client(b)
		nd := newNode(b)
		ctx := context.Background()
		must(b, createNamespace(ctx, cs, "newpod", nil))
		allowed, intruder := nd.addPod(allowedIP), nd.addPod(intruderIP)
		must(b, createPod(ctx, cs, "newpod", "allowed", nodeName, map[string]string{"role": "allowed"}, allowedIP))
		must(b, createPod(ctx, cs, "newpod", "intruder", nodeName, map[string]string{"role": "other"}, intruderIP))
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *labels("app", "web"),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: labels("role", "allowed")}}}}}}
		_, err := cs.NetworkingV1().NetworkPolicies("newpod").Create(ctx, np, metav1.CreateOptions{})
		must(b, err)
		startEnforcer(b, cs, nd)
		fmt.Printf("\nNew pod: from the end of CNI ADD (kubelet's status update sent right after it)\n\n")
		fmt.Printf("| round | allowed client through | allowed refused | intruder through until | intruder connections through |\n|---|---|---|---|---|\n")
		var firstOK, window []float64
		for i := range 10 {
			r := newPodRound(b, cs, nd, i, allowed, intruder)
			fmt.Printf("| %d | %.1f ms | %d | %.1f ms | %d |\n", i, r.allowedAt, r.allowedRefused, r.protectedAt, r.intruderThrough)
			firstOK, window = append(firstOK, r.allowedAt), append(window, r.protectedAt)
		}
		fmt.Printf("| median | %.1f ms | | %.1f ms | |\n| max | %.1f ms | | %.1f ms | |\n", median(firstOK), median(window), quantile(firstOK, 1), quantile(window, 1))
		b.ReportMetric(median(window), "window-ms")
	}
}

type podRound struct {
	allowedAt, protectedAt          float64 // ms after ADD
	allowedRefused, intruderThrough int
}

// newPodRound starts pod web-i and probes it until the intruder is
// refused, and the allowed client for as long.
func newPodRound(b *testing.B, cs kubernetes.Interface, nd *node, i int, allowed, intruder *netns.NS) podRound {
	ctx := context.Background()
	ip := netip.AddrFrom4([4]byte{10, 244, 0, byte(100 + i)})
	name := fmt.Sprintf("web-%d", i)
	must(b, createPod(ctx, cs, "newpod", name, nodeName, map[string]string{"app": "web"}, netip.Addr{}))
	time.Sleep(200 * time.Millisecond) // the Pod reaches the enforcer before ADD, as it reaches kubelet
	pod := nd.addPod(ip)
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
	var r podRound
	for deadline := added.Add(30 * time.Second); r.protectedAt == 0; {
		if connect(allowed, dst, 3*time.Millisecond) {
			if r.allowedAt == 0 {
				r.allowedAt = ms(time.Since(added))
			}
		} else {
			r.allowedRefused++
		}
		if connect(intruder, dst, 3*time.Millisecond) {
			r.intruderThrough++
		} else {
			r.protectedAt = ms(time.Since(added))
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: the intruder still gets through after 30 s", name)
		}
	}
	return r
}
