package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/policy/cnisock"
)

// createPod creates the Pod object of n's pod in namespace ns, running
// on n with n's pod address.
func (n *node) createPod(ns, name string, labels map[string]string) {
	ctx := context.Background()
	cs := n.l.cs
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}, metav1.CreateOptions{})
	must(n.l.t, err)
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: n.podIP.String(), PodIPs: []corev1.PodIP{{IP: n.podIP.String()}}}
	_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	must(n.l.t, err)
}

// clientAndServer makes Pod objects client (on from, app=client) and
// server (on to, app=server, serving TCP 8080 in to's pod) in ns, and
// returns reach: it polls until the client's connections to the server
// succeed (want) or are refused, failing the test after 20 s.
func clientAndServer(t *testing.T, ns string, from, to *node) (reach func(want bool, what string)) {
	t.Helper()
	to.createPod(ns, "server", map[string]string{"app": "server"})
	from.createPod(ns, "client", map[string]string{"app": "client"})
	dst := netip.AddrPortFrom(to.podIP, 8080)
	srv, err := probe.Serve(to.pod, dst, "server")
	must(t, err)
	t.Cleanup(func() { srv.Close() })
	return func(want bool, what string) {
		t.Helper()
		eventually(t, 20*time.Second, what, func() (bool, string) {
			_, err := probe.Ask(from.pod, "tcp", dst, 300*time.Millisecond)
			return (err == nil) == want, fmt.Sprintf("reached: %v\n%s\n%s", err == nil, nftTable(to), to.agent.log.String())
		})
	}
}

// createNamespace creates namespace ns with the ServiceAccount Pod
// admission needs, deleted (with what it holds) when the test ends.
func (l *lab) createNamespace(ns string) {
	ctx := context.Background()
	_, err := l.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	must(l.t, err)
	_, err = l.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must(l.t, err)
	l.t.Cleanup(func() {
		zero := metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
		l.cs.CoreV1().Pods(ns).DeleteCollection(ctx, zero, metav1.ListOptions{})
		l.cs.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		l.cs.CoreV1().ServiceAccounts(ns).Delete(ctx, "default", metav1.DeleteOptions{})
		l.cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	})
}

// metric returns the value of the metric line starting with name in
// n's agent's metrics, or -1.
func metric(t *testing.T, n *node, name string) float64 {
	for line := range strings.SplitSeq(metricsOf(t, n), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// nftTable lists the policy table of n ("" when there is none).
func nftTable(n *node) string {
	out, err := execns.Output(context.Background(), n.ns, nil, "nft", "list", "table", "inet", "podnet-policy")
	if err != nil {
		return ""
	}
	return string(out)
}

// TestAgentNetworkPolicy: with its default --network-policy the agent
// enforces a NetworkPolicy on its node's pod — a client pod on another
// node is refused once a policy allows only other pods, and allowed again
// once relabelled into the policy's peers —, counts the denied packets
// and the programming latency in its metrics, answers /healthz, leaves
// the table in force when it stops, and --cleanup removes it.
func TestAgentNetworkPolicy(t *testing.T) {
	l := newLab(t, 2)
	n0, n1 := l.nodes[0], l.nodes[1]
	n0.start("--metrics-addr", "127.0.0.1:0")
	n1.start("--network-policy=false")
	n0.ready()
	n1.ready()
	ns := l.prefix + "-np"
	l.createNamespace(ns)
	reach := clientAndServer(t, ns, n1, n0)
	reach(true, "the client reaching the server before any policy")
	ctx := context.Background()
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "from-frontend"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}}}},
	}}
	_, err := l.cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
	must(t, err)
	reach(false, "the policy refusing the client")
	if v := metric(t, n0, `podnet_network_policy_denied_packets_total{direction="ingress"}`); v < 1 {
		t.Errorf("denied ingress packets %v, want > 0", v)
	}
	for _, m := range []string{"podnet_network_policy_programming_duration_seconds_count", "felix_int_dataplane_apply_time_seconds_count"} {
		if v := metric(t, n0, m); v < 1 {
			t.Errorf("%s = %v, want > 0", m, v)
		}
	}
	client, err := l.cs.CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{})
	must(t, err)
	client.Labels["app"] = "frontend"
	_, err = l.cs.CoreV1().Pods(ns).Update(ctx, client, metav1.UpdateOptions{})
	must(t, err)
	reach(true, "the client, relabelled into the policy's peers, reaching the server")
	resp, err := http.Get("http://" + metricsAddr(t, n0) + "/healthz")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}
	if nftTable(n1) != "" {
		t.Errorf("--network-policy=false wrote a policy table:\n%s", nftTable(n1))
	}

	n0.agent.stop()
	if !strings.Contains(nftTable(n0), "chain ingress") {
		t.Fatalf("the policy table went with the agent:\n%s", nftTable(n0))
	}
	cmd := exec.Command(filepath.Join(binDir, "podnet-agent"), "--netns", n0.ns.Path(), "--cni-conf-dir", n0.confDir, "--cleanup")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, b)
	}
	if out := nftTable(n0); out != "" {
		t.Errorf("--cleanup left the policy table:\n%s", out)
	}
}

// TestAgentPolicySocket: the agent serves podnet-bridge on its socket
// (mode 0600) once it enforces: an ADD for a new pod, whose Pod has no
// address yet, returns with the pod isolated — the first connection of
// a peer the policy denies is refused —; when the agent stops the
// socket goes, and an ADD then fails at once.
func TestAgentPolicySocket(t *testing.T) {
	l := newLab(t, 2)
	n0, n1 := l.nodes[0], l.nodes[1]
	n0.start()
	n1.start("--network-policy=false")
	n0.ready()
	n1.ready()
	ns := l.prefix + "-sock"
	l.createNamespace(ns)
	ctx := context.Background()
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-web"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}
	_, err := l.cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
	must(t, err)
	pod, err := l.cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: n0.name, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}, metav1.CreateOptions{})
	must(t, err)
	srv, err := probe.Serve(n0.pod, netip.AddrPortFrom(n0.podIP, 8080), "web")
	must(t, err)
	defer srv.Close()
	dst := netip.AddrPortFrom(n0.podIP, 8080)
	if _, err := probe.Ask(n1.pod, "tcp", dst, 2*time.Second); err != nil {
		t.Fatalf("the pod, unknown to the agent, is not reachable: %v", err)
	}
	var fi os.FileInfo
	eventually(t, 20*time.Second, "the agent's socket", func() (bool, string) {
		fi, err = os.Stat(n0.socket)
		return err == nil, fmt.Sprint(err, "\n", n0.agent.log.String())
	})
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket 0600", fi.Mode())
	}
	add := cnisock.Request{Version: cnisock.Version, Op: cnisock.Add, ContainerID: "sandbox-1", Namespace: ns, Name: "web",
		UID: string(pod.UID), IPs: []netip.Addr{n0.podIP}}
	start := time.Now()
	must(t, cnisock.Send(ctx, n0.socket, add))
	t.Logf("ADD answered in %v", time.Since(start))
	if _, err := probe.Ask(n1.pod, "tcp", dst, 300*time.Millisecond); err == nil {
		t.Fatalf("a peer the policy denies reached the pod right after ADD returned\n%s", nftTable(n0))
	}
	n0.agent.stop()
	if _, err := os.Stat(n0.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after the agent stopped: %v", err)
	}
	start = time.Now()
	if err := cnisock.Send(ctx, n0.socket, add); !errors.Is(err, cnisock.ErrUnavailable) || time.Since(start) > time.Second {
		t.Errorf("ADD without the agent: %v after %v, want ErrUnavailable at once", err, time.Since(start))
	}
}
