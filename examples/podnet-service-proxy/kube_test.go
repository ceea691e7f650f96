package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

// kubeNode is a node namespace with pods behind /32 routes, each pod
// answering on 8080 (TCP and UDP) with its name, and a proxy process
// following the shared API server.
type kubeNode struct {
	t    *testing.T
	ns   *netns.NS
	pods map[string]netip.Addr
	log  *syncBuffer
	cmd  *exec.Cmd
	done chan error
}

// kubeNodeIP is node0's InternalIP in its Node object (see newAPI), an
// address of every kubeNode's loopback; kubeNodeOtherIP is a second local
// address the Node object does not name.
const (
	kubeNodeIP      = "10.240.0.10"
	kubeNodeOtherIP = "198.51.100.10"
)

func newKubeNode(t *testing.T, pods ...string) *kubeNode {
	n := &kubeNode{t: t, ns: nstest.NewNamed(t), pods: map[string]netip.Addr{}}
	for _, a := range []string{kubeNodeIP, kubeNodeOtherIP} {
		must(t, addr.Ensure(n.ns, "lo", netip.MustParsePrefix(a+"/32")))
	}
	for i, name := range pods {
		a := netip.AddrFrom4([4]byte{10, 200, 0, byte(2 + i)})
		pns := nstest.New(t)
		host := fmt.Sprintf("veth%d", i)
		_, err := veth.Create(n.ns, veth.Spec{Name: host, PeerName: "eth0", PeerNS: pns})
		must(t, err)
		must(t, addr.Ensure(pns, "eth0", netip.PrefixFrom(a, 32)))
		must(t, addr.Ensure(n.ns, host, netip.MustParsePrefix("10.200.0.1/32")))
		must(t, route.Ensure(pns, route.Route{Dst: netip.MustParsePrefix("10.200.0.1/32"), Dev: "eth0"}))
		must(t, route.EnsureDefault(pns, netip.MustParseAddr("10.200.0.1"), "eth0"))
		must(t, route.Ensure(n.ns, route.Route{Dst: netip.PrefixFrom(a, 32), Dev: host}))
		srv, err := probe.Serve(pns, netip.AddrPortFrom(a, 8080), name)
		must(t, err)
		t.Cleanup(func() { srv.Close() })
		n.pods[name] = a
	}
	if len(pods) > 0 {
		// A locally generated packet is routed before OUTPUT's DNAT
		// rewrites it: the service range needs a route (on a real node,
		// the default route does it).
		must(t, route.Ensure(n.ns, route.Route{Dst: netip.MustParsePrefix("10.96.0.0/16"), Dev: "veth0"}))
	}
	return n
}

// start runs the proxy against kubeconfig.
func (n *kubeNode) start(kubeconfig string, extra ...string) {
	n.log = &syncBuffer{}
	args := append([]string{"--netns", n.ns.Path(), "--node-name", "node0", "--cluster-cidr", "10.200.0.0/16",
		"--kubeconfig", kubeconfig, "--min-sync-period", "0", "--sync-period", "2s"}, extra...)
	n.cmd = exec.Command(filepath.Join(binDir, "podnet-service-proxy"), args...)
	n.cmd.Stderr = n.log
	must(n.t, n.cmd.Start())
	n.done = make(chan error, 1)
	go func() { n.done <- n.cmd.Wait() }()
	n.t.Cleanup(n.stop)
}

func (n *kubeNode) stop() {
	if n.cmd.ProcessState != nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
	exec.Command(filepath.Join(binDir, "podnet-service-proxy"), "--netns", n.ns.Path(), "--cleanup").Run()
}

// logged waits, up to wait, for the proxy's log to hold line, failing
// the test if the proxy exits first.
func (n *kubeNode) logged(line string, wait time.Duration) {
	n.t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(n.log.String(), line) {
		n.alive()
		if time.Now().After(deadline) {
			n.t.Fatalf("no %q in the proxy's log:\n%s", line, n.log.String())
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}

// alive fails the test if the proxy has exited.
func (n *kubeNode) alive() {
	n.t.Helper()
	select {
	case err := <-n.done:
		n.t.Fatalf("proxy exited: %v\n%s", err, n.log.String())
	default:
	}
}

// answers asks dst over TCP until the set of pods that answered is
// exactly want (each asked at least once), within 10 s.
func (n *kubeNode) answers(dst netip.AddrPort, want ...string) {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		seen := map[string]bool{}
		var lastErr error
		for range 30 {
			r, err := probe.Ask(n.ns, "tcp", dst, 300*time.Millisecond)
			if err != nil {
				lastErr = err
				continue
			}
			seen[r.Name] = true
		}
		ok := len(seen) == len(want)
		for _, w := range want {
			ok = ok && seen[w]
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			n.alive()
			n.t.Fatalf("%s answered by %v (last error %v), want %v\nproxy log:\n%s", dst, seen, lastErr, want, n.log.String())
		}
	}
}

// refused waits until a TCP connection to dst is refused (the reject rule
// of a Service without endpoints, or no Service at all on a local address).
func (n *kubeNode) refused(dst netip.AddrPort) {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := probe.Ask(n.ns, "tcp", dst, 300*time.Millisecond)
		if err != nil && strings.Contains(err.Error(), "refused") {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: %v, want connection refused\nproxy log:\n%s", dst, err, n.log.String())
		}
	}
}

// unanswered waits until dst gets no answer: the node has no rule for it
// and no route.
func (n *kubeNode) unanswered(dst netip.AddrPort) {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := probe.Ask(n.ns, "tcp", dst, 300*time.Millisecond)
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s still answered by %s\nproxy log:\n%s", dst, r.Name, n.log.String())
		}
	}
}

// api creates objects for one test in its own Kubernetes namespace.
type api struct {
	t  *testing.T
	cs kubernetes.Interface
	ns string
}

func newAPI(t *testing.T, cp *kubetest.ControlPlane) *api {
	cs, err := cp.Client()
	must(t, err)
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	_, err = cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	// node0 as its kubelet registers it; the proxy reads its addresses.
	_, err = cs.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node0"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: kubeNodeIP}}}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return &api{t: t, cs: cs, ns: name}
}

// service creates a ClusterIP Service named name with port 80 -> 8080 and
// returns its cluster IP.
func (a *api) service(name string, port int32) netip.Addr {
	a.t.Helper()
	svc, err := a.cs.CoreV1().Services(a.ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	must(a.t, err)
	return netip.MustParseAddr(svc.Spec.ClusterIP)
}

// nodePort creates a NodePort Service named name with port -> 8080 and
// returns its node port.
func (a *api) nodePort(name string, port int32) uint16 {
	a.t.Helper()
	svc, err := a.cs.CoreV1().Services(a.ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	must(a.t, err)
	return uint16(svc.Spec.Ports[0].NodePort)
}

type ep struct {
	addr                        netip.Addr
	ready, serving, terminating bool
}

func readyEP(a netip.Addr) ep { return ep{addr: a, ready: true, serving: true} }

// slice creates or replaces the EndpointSlice name of Service svc, with
// the trigger-time annotation set to now.
func (a *api) slice(svc, name string, typ discoveryv1.AddressType, eps ...ep) {
	a.t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc},
			Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339Nano)}},
		AddressType: typ,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.addr.String()}, NodeName: ptr("node0"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.serving), Terminating: ptr(e.terminating)}})
	}
	ctx := context.Background()
	c := a.cs.DiscoveryV1().EndpointSlices(a.ns)
	old, err := c.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = c.Update(ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = c.Create(ctx, es, metav1.CreateOptions{})
	}
	must(a.t, err)
}

// TestKubeFollowsServices: Services and EndpointSlices created, changed
// and deleted through a real API server reach the rules, shown with
// traffic from the node to the cluster IP.
func TestKubeFollowsServices(t *testing.T) {
	cp := kubetest.Shared(t)
	node := newKubeNode(t, "a", "b", "c")
	a := newAPI(t, cp)
	node.start(cp.Kubeconfig)
	ip := a.service("web", 80)
	vip := netip.AddrPortFrom(ip, 80)
	pa, pb, pc := node.pods["a"], node.pods["b"], node.pods["c"]

	node.refused(vip) // a Service without endpoints rejects
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(pa))
	node.answers(vip, "a")
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(pa), readyEP(pb))
	node.answers(vip, "a", "b")

	// Split over two slices, one address in both (counted once), plus an
	// IPv6 slice the IPv4 proxy must ignore.
	a.slice("web", "web-2", discoveryv1.AddressTypeIPv4, readyEP(pc), readyEP(pa))
	a.slice("web", "web-v6", discoveryv1.AddressTypeIPv6, readyEP(netip.MustParseAddr("fd00:200::9")))
	node.answers(vip, "a", "b", "c")

	// Terminating: a still serves and is the only ready one left ...
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(pa), ep{addr: pb, serving: true, terminating: true})
	a.slice("web", "web-2", discoveryv1.AddressTypeIPv4, ep{addr: pc, serving: true, terminating: true})
	node.answers(vip, "a")
	// ... and when none is ready, the serving terminating ones take over.
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, ep{addr: pb, serving: true, terminating: true})
	node.answers(vip, "b", "c")

	// A port change moves the Service.
	svc, err := a.cs.CoreV1().Services(a.ns).Get(context.Background(), "web", metav1.GetOptions{})
	must(t, err)
	svc.Spec.Ports[0].Port = 81
	_, err = a.cs.CoreV1().Services(a.ns).Update(context.Background(), svc, metav1.UpdateOptions{})
	must(t, err)
	node.answers(netip.AddrPortFrom(ip, 81), "b", "c")
	node.unanswered(vip)

	must(t, a.cs.CoreV1().Services(a.ns).Delete(context.Background(), "web", metav1.DeleteOptions{}))
	node.unanswered(netip.AddrPortFrom(ip, 81))
	node.alive()
}

// TestKubeAPIServerRestart: with the API server stopped, traffic keeps
// flowing on the rules in force; once it is back, a change made after the
// restart is followed.
func TestKubeAPIServerRestart(t *testing.T) {
	cp := kubetest.Shared(t)
	node := newKubeNode(t, "a", "b")
	a := newAPI(t, cp)
	node.start(cp.Kubeconfig)
	vip := netip.AddrPortFrom(a.service("web", 80), 80)
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(node.pods["a"]))
	node.answers(vip, "a")

	must(t, cp.StopAPIServer())
	restarted := false
	defer func() {
		if !restarted {
			cp.StartAPIServer(context.Background())
		}
	}()
	for range 5 { // the proxy's periodic syncs (2 s) run meanwhile
		node.answers(vip, "a")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must(t, cp.StartAPIServer(ctx))
	restarted = true
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(node.pods["b"]))
	node.answers(vip, "b")
	node.alive()
	if !strings.Contains(node.log.String(), "cannot reach the API server") {
		t.Errorf("no log line about the lost API server:\n%s", node.log.String())
	}
}

// TestKubeUnreachableAtStart: a proxy started while the API server is
// down says why it waits, keeps retrying, does not exit, and syncs once
// the API server is back.
func TestKubeUnreachableAtStart(t *testing.T) {
	cp := kubetest.Shared(t)
	node := newKubeNode(t, "a")
	a := newAPI(t, cp)
	vip := netip.AddrPortFrom(a.service("web", 80), 80)
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(node.pods["a"]))
	must(t, cp.StopAPIServer())
	restarted := false
	defer func() {
		if !restarted {
			cp.StartAPIServer(context.Background())
		}
	}()
	node.start(cp.Kubeconfig)
	node.logged("cannot reach the API server", 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must(t, cp.StartAPIServer(ctx))
	restarted = true
	node.answers(vip, "a")
}

// TestKubeNodePortAddresses: with an API server the nftables backend
// serves node ports on the Node object's InternalIP only (kube-proxy's
// nftables default, --nodeport-addresses primary), the iptables backend
// on every local address (kube-proxy's iptables default); the node's
// other address refuses at once.
func TestKubeNodePortAddresses(t *testing.T) {
	cp := kubetest.Shared(t)
	a := newAPI(t, cp)
	for _, c := range []struct {
		backend string
		other   bool // the address the Node object does not name serves
	}{{"nftables", false}, {"iptables", true}} {
		t.Run(c.backend, func(t *testing.T) {
			node := newKubeNode(t, "a")
			np := a.nodePort("web-"+c.backend, 80)
			a.slice("web-"+c.backend, "web-"+c.backend+"-1", discoveryv1.AddressTypeIPv4, readyEP(node.pods["a"]))
			node.start(cp.Kubeconfig, "--backend", c.backend)
			node.answers(netip.AddrPortFrom(netip.MustParseAddr(kubeNodeIP), np), "a")
			other := netip.AddrPortFrom(netip.MustParseAddr(kubeNodeOtherIP), np)
			if c.other {
				node.answers(other, "a")
			} else {
				node.refused(other)
			}
			node.alive()
		})
	}
	// The Node's address not on the node: the proxy still starts.
	t.Run("not-local", func(t *testing.T) {
		node := newKubeNode(t, "a")
		must(t, addr.Delete(node.ns, "lo", netip.MustParsePrefix(kubeNodeIP+"/32")))
		np := a.nodePort("web-not-local", 80)
		node.start(cp.Kubeconfig)
		node.logged("not on this node's interfaces", 10*time.Second)
		node.refused(netip.AddrPortFrom(netip.MustParseAddr(kubeNodeOtherIP), np))
		node.alive()
	})
	ns := nstest.NewNamed(t)
	out, err := proxyCmd(ns, "--manifests", t.TempDir(), "--once", "--nodeport-addresses", "primary").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "primary") || !strings.Contains(string(out), "API server") {
		t.Errorf("--nodeport-addresses primary without an API server: %v\n%s", err, out)
	}
}

// TestKubePodCIDRsFromNode: without --cluster-cidr the proxy waits for
// its Node object's podCIDRs, then serves.
func TestKubePodCIDRsFromNode(t *testing.T) {
	cp := kubetest.Shared(t)
	a := newAPI(t, cp)
	node := newKubeNode(t, "a")
	vip := netip.AddrPortFrom(a.service("web", 80), 80)
	a.slice("web", "web-1", discoveryv1.AddressTypeIPv4, readyEP(node.pods["a"]))
	name := "node-" + a.ns
	node.start(cp.Kubeconfig, "--node-name", name, "--cluster-cidr", "")
	node.logged("waiting for this node's Node object", 10*time.Second)
	_, err := a.cs.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.NodeSpec{PodCIDR: "10.200.0.0/24", PodCIDRs: []string{"10.200.0.0/24"}}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { a.cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	node.answers(vip, "a")
	if !strings.Contains(node.log.String(), "podCIDRs=[10.200.0.0/24]") {
		t.Errorf("podCIDRs not read from the Node:\n%s", node.log.String())
	}
}

// TestKubeBadSource: two sources, or none, are refused with a clear error.
func TestKubeBadSource(t *testing.T) {
	ns := nstest.NewNamed(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--manifests", t.TempDir(), "--kubeconfig", "/nonexistent"}, "choose one source"},
		{nil, "no source"},
		{[]string{"--kubeconfig", filepath.Join(t.TempDir(), "missing")}, "kubeconfig"},
	} {
		cmd := exec.Command(filepath.Join(binDir, "podnet-service-proxy"), append([]string{"--netns", ns.Path()}, c.args...)...)
		cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: err %v, output %s; want an error with %q", c.args, err, out, c.want)
		}
	}
}
