package deploy

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/policy/cnisock"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// policyPod is the agent job's pod: a namespace routed from the node
// (vpod, 10.244.2N.1/24) at 10.244.2N.5, serving TCP 8080; the node's
// neighbour reaches it through the node.
func policyPod(r *run) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(2 * r.id), 5}), 8080)
}

// preparePolicyPod makes the pod's namespace, its server and the routes
// to it; the Pod object comes in policyStep.
func preparePolicyPod(r *run) {
	pod := nstest.New(r.t)
	r.pod = pod
	dst := policyPod(r)
	gw := netip.AddrFrom4([4]byte{10, 244, byte(2 * r.id), 1})
	_, err := veth.Create(r.ns, veth.Spec{Name: "vpod", PeerName: "eth0", PeerNS: pod})
	must(r.t, err)
	must(r.t, addr.Ensure(r.ns, "vpod", netip.PrefixFrom(gw, 24)))
	must(r.t, addr.Ensure(pod, "eth0", netip.PrefixFrom(dst.Addr(), 24)))
	must(r.t, route.EnsureDefault(pod, gw, "eth0"))
	must(r.t, route.Ensure(r.peer, route.Route{Dst: netip.PrefixFrom(gw, 24).Masked(), Gateway: nodeIP}))
	srv, err := probe.Serve(pod, dst, "policy-pod")
	must(r.t, err)
	r.clean = append(r.clean, func() { srv.Close() })
}

// policyStep: the agent enforces NetworkPolicy — a pod of this node that
// the neighbour reaches stops answering it once a deny-all-ingress policy
// selects it. Without any verb of the policy informers the enforcer never
// has the whole model, and writes nothing.
func policyStep(r *run) error {
	ctx := context.Background()
	ns := r.namespace()
	createNamespace(r)
	// What the controller-manager would create, and Pod admission needs.
	_, err := r.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() { r.cs.CoreV1().ServiceAccounts(ns).Delete(ctx, "default", metav1.DeleteOptions{}) })
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: r.node, Containers: []corev1.Container{{Name: "web", Image: "podnet:dev"}}}}
	pod, err = r.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() {
		r.cs.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	})
	dst := policyPod(r)
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: dst.Addr().String(), PodIPs: []corev1.PodIP{{IP: dst.Addr().String()}}}
	_, err = r.cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	must(r.t, err)
	if err := r.await("the neighbour reaches the pod before any policy", func() (bool, string) {
		reply, err := probe.Ask(r.peer, "tcp", dst, 300*time.Millisecond)
		return err == nil, fmt.Sprint(reply.Name, err)
	}); err != nil {
		return err
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-ingress", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	_, err = r.cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() { r.cs.NetworkingV1().NetworkPolicies(ns).Delete(ctx, np.Name, metav1.DeleteOptions{}) })
	return r.await("the agent enforces a deny-all-ingress NetworkPolicy on its pod", func() (bool, string) {
		reply, err := probe.Ask(r.peer, "tcp", dst, 300*time.Millisecond)
		return err != nil, fmt.Sprintf("still answered: %s", reply.Name)
	})
}

// socketStep: the agent serves podnet-bridge on /run/podnet/policy.sock
// inside its container (the node's, through the manifest's hostPath),
// root-owned, mode 0600, and answers an ADD for its pod once the pod's
// policies are in force. The test reaches the container's /run through
// /proc/PID/root, as the runtime reaches the node's.
func socketStep(r *run) error {
	ctx := context.Background()
	path := fmt.Sprintf("/proc/%d/root%s", r.cmd.Process.Pid, cnisock.DefaultPath)
	var fi os.FileInfo
	if err := r.await("the agent's policy socket", func() (bool, string) {
		var err error
		fi, err = os.Stat(path)
		return err == nil, fmt.Sprint(err)
	}); err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st == nil || st.Uid != 0 {
		return fmt.Errorf("policy socket %s: mode %v, owner %v; want a socket of root, 0600", path, fi.Mode(), st)
	}
	pod, err := r.cs.CoreV1().Pods(r.namespace()).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		return err
	}
	add := cnisock.Request{Version: cnisock.Version, Op: cnisock.Add, ContainerID: "sandbox-web", Namespace: pod.Namespace, Name: pod.Name,
		UID: string(pod.UID), IPs: []netip.Addr{policyPod(r).Addr()}}
	sctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := cnisock.Send(sctx, path, add); err != nil {
		return fmt.Errorf("ADD through the agent's socket: %w", err)
	}
	return nil
}
