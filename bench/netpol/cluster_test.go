package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// The synthetic cluster: nsCount namespaces (team t0…t9) of podsPerNS
// pods, localPerNS of them on the benchmark's node; polPerNS policies per
// namespace, policy k selecting app-k and allowing TCP 80 and the named
// port http from clients of its namespace and from clients of the
// namespaces of team k.
const (
	nsCount    = 100
	podsPerNS  = 100
	polPerNS   = 10
	localPerNS = 10
	nodeName   = "bench-node"
)

// create makes one API object per call of fn(i), i < n, with 16 writers.
func parallel(tb testing.TB, n int, fn func(i int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		tb.Fatal(err)
	default:
	}
}

// createNamespace creates ns with labels and the ServiceAccount Pod
// admission needs.
func createNamespace(ctx context.Context, cs kubernetes.Interface, ns string, labels map[string]string) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	return err
}

// createPod creates a running pod on node with address ip, as the
// scheduler and kubelet would leave it.
func createPod(ctx context.Context, cs kubernetes.Interface, ns, name, node string, labels map[string]string, ip netip.Addr) error {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: corev1.PodSpec{NodeName: node,
		Containers: []corev1.Container{{Name: "c", Image: "none", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil || !ip.IsValid() {
		return err
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}
	_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return err
}

func synthNS(n int) string { return fmt.Sprintf("bench-%03d", n) }

// loadCluster creates the synthetic cluster through the API.
func loadCluster(tb testing.TB, cs kubernetes.Interface) {
	ctx := context.Background()
	parallel(tb, nsCount, func(n int) error {
		return createNamespace(ctx, cs, synthNS(n), map[string]string{"team": fmt.Sprintf("t%d", n%10)})
	})
	parallel(tb, nsCount*podsPerNS, func(i int) error {
		n, j := i/podsPerNS, i%podsPerNS
		role, node := "server", "other-node"
		if j%2 == 1 {
			role = "client"
		}
		if j < localPerNS {
			node = nodeName
		}
		ip := netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
		return createPod(ctx, cs, synthNS(n), fmt.Sprintf("p%d", j), node, map[string]string{"app": fmt.Sprintf("app-%d", j%polPerNS), "role": role}, ip)
	})
	parallel(tb, nsCount*polPerNS, func(i int) error {
		n, k := i/polPerNS, i%polPerNS
		client := &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}
		tcp, http := corev1.ProtocolTCP, intstr.FromString("http")
		p80 := intstr.FromInt32(80)
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pol-%d", k)}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", k)}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: client},
					{PodSelector: client, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", k)}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}, {Protocol: &tcp, Port: &http}},
			}},
		}}
		_, err := cs.NetworkingV1().NetworkPolicies(synthNS(n)).Create(ctx, np, metav1.CreateOptions{})
		return err
	})
}
