package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// The upstream Netpol e2e world: namespaces x, y and z with pods a, b and
// c each, every pod serving TCP and UDP on ports 80 and 81 (and 53, for
// the DNS case), named serve-80-tcp and so on. Pods a and b run on node0,
// c on node1.
var (
	labNamespaces = []string{"x", "y", "z"}
	labPods       = []string{"a", "b", "c"}
	labPorts      = []int32{80, 81, 53}
)

// lab is that world twice over: as API objects in the shared control
// plane, and as network namespaces carrying traffic, two nodes each with
// a bridge cni0 joining its pods, routed to each other:
//
//	node0 cni0 10.244.0.1/24 — eth1 10.240.0.10 ══ eth1 10.240.0.11 — node1 cni0 10.244.1.1/24
//
// Each node runs a policy.Enforcer fed by a Source from the API server,
// as podnet-agent does. The Kubernetes namespaces are named tag-x and so
// on (a deleted namespace stays Terminating without a controller
// manager, so each lab needs names of its own), labelled ns=x.
type lab struct {
	t     *testing.T
	cs    kubernetes.Interface
	tag   string
	nodes [2]*netns.NS
	pods  map[string]*netns.NS // by short name "x/a"
}

// kns returns the Kubernetes namespace of the world's namespace short.
func (l *lab) kns(short string) string { return l.tag + "-" + short }

func (l *lab) nodeName(i int) string { return fmt.Sprintf("%s-node%d", l.tag, i) }

func podNode(name string) int {
	if name == "c" {
		return 1
	}
	return 0
}

// podAddr returns pod ns/name's address, 10.244.N.(10*ns+pod) with N its
// node.
func podAddr(ns, name string) netip.Addr {
	i, j := slices.Index(labNamespaces, ns), slices.Index(labPods, name)
	return netip.AddrFrom4([4]byte{10, 244, byte(podNode(name)), byte(10*(i+1) + j)})
}

func newLab(t *testing.T, tag string) *lab {
	t.Helper()
	nstest.Require(t)
	// The pods name port 80 twice ("web" too), which the API server
	// warns about on every write.
	cfg := rest.CopyConfig(kubetest.Shared(t).Config)
	cfg.QPS, cfg.Burst, cfg.WarningHandler = 1000, 2000, rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	l := &lab{t: t, cs: cs, tag: tag, pods: map[string]*netns.NS{}}
	l.createObjects()
	l.createNodes()
	for _, ns := range labNamespaces {
		for _, p := range labPods {
			l.addPod(ns, p)
		}
	}
	for i := range l.nodes {
		l.enforce(i)
	}
	return l
}

// createObjects makes the namespaces and pods in the API server, pods
// with their addresses in status as kubelet reports them, and deletes
// them when the test ends (pods at once: no kubelet confirms a graceful
// deletion, and the next lab's enforcers would see them).
func (l *lab) createObjects() {
	t, ctx := l.t, context.Background()
	for _, short := range labNamespaces {
		name := l.kns(short)
		_, err := l.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"ns": short}}}, metav1.CreateOptions{})
		must(t, err)
		t.Cleanup(func() { l.cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}) })
		// No controller manager makes the default service account pods need.
		_, err = l.cs.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		must(t, err)
		t.Cleanup(func() {
			now := int64(0)
			l.cs.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &now}, metav1.ListOptions{})
			l.cs.NetworkingV1().NetworkPolicies(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		})
		for _, p := range labPods {
			createPod(t, l.cs, name, labPod(p, l.nodeName(podNode(p)), podAddr(short, p)))
		}
	}
}

// labPod returns the API object of pod name: labelled pod=name, with a
// named container port for each port and protocol, and "web", which is
// port 80 on pods a and b and 81 on c (a name that resolves differently
// per pod).
func labPod(name, node string, ip netip.Addr) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, port := range labPorts {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			ports = append(ports, corev1.ContainerPort{Name: portName(port, proto), ContainerPort: port, Protocol: proto})
		}
	}
	web := corev1.ContainerPort{Name: "web", ContainerPort: 80, Protocol: corev1.ProtocolTCP}
	if name == "c" {
		web.ContainerPort = 81
	}
	p := pod(name, node, ip.String(), map[string]string{"pod": name}, ports...)
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar", Image: "agnhost", Ports: []corev1.ContainerPort{web}})
	return p
}

func portName(port int32, proto corev1.Protocol) string {
	return fmt.Sprintf("serve-%d-%s", port, map[corev1.Protocol]string{corev1.ProtocolTCP: "tcp", corev1.ProtocolUDP: "udp"}[proto])
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func (l *lab) createNodes() {
	t := l.t
	for i := range l.nodes {
		n := nstest.New(t)
		l.nodes[i] = n
		_, err := bridge.Ensure(n, bridge.Spec{Name: "cni0"})
		must(t, err)
		must(t, bridge.EnsureAddr(n, "cni0", pfx(fmt.Sprintf("10.244.%d.1/24", i)), bridge.AddrOptions{}))
		must(t, route.SetForwarding(n, 4, true))
	}
	_, err := veth.Create(l.nodes[0], veth.Spec{Name: "eth1", PeerName: "eth1", PeerNS: l.nodes[1]})
	must(t, err)
	for i, n := range l.nodes {
		other := 1 - i
		must(t, addr.Ensure(n, "eth1", pfx(fmt.Sprintf("10.240.0.1%d/24", i))))
		must(t, route.Ensure(n, route.Route{Dst: pfx(fmt.Sprintf("10.244.%d.0/24", other)), Gateway: netip.MustParseAddr(fmt.Sprintf("10.240.0.1%d", other))}))
	}
}

// addPod creates pod ns/name's namespace on its node's bridge, with a
// server on every port.
func (l *lab) addPod(ns, name string) {
	t, node := l.t, podNode(name)
	pod := nstest.New(t)
	host := "v" + ns + name
	_, err := veth.Create(l.nodes[node], veth.Spec{Name: host, PeerName: "eth0", PeerNS: pod})
	must(t, err)
	must(t, bridge.Attach(l.nodes[node], "cni0", host, bridge.PortOptions{}))
	a := podAddr(ns, name)
	must(t, addr.Ensure(pod, "eth0", netip.PrefixFrom(a, 24)))
	must(t, route.EnsureDefault(pod, netip.AddrFrom4([4]byte{10, 244, byte(node), 1}), "eth0"))
	for _, port := range labPorts {
		srv, err := probe.Serve(pod, netip.AddrPortFrom(a, uint16(port)), ns+"/"+name)
		must(t, err)
		t.Cleanup(func() { srv.Close() })
	}
	l.pods[ns+"/"+name] = pod
}

// enforce runs node i's enforcer, fed by a Source of its own, until the
// test ends; Start returns once the enforcer holds every object.
func (l *lab) enforce(i int) {
	t := l.t
	e, err := policy.New(policy.Config{NetNS: l.nodes[i]})
	must(t, err)
	src, err := New(Config{Client: l.cs, Enforcer: e, NodeName: l.nodeName(i)})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); e.Cleanup(context.Background()) })
	must(t, src.Start(ctx))
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.Run(ctx, policy.RunConfig{SyncPeriod: time.Hour, OnSync: func(_ policy.SyncResult, err error) {
			if err != nil {
				t.Errorf("node%d: sync: %v", i, err)
			}
		}})
	}()
}

// setPolicies makes the policies in the lab's namespaces exactly nps
// (their Namespace a short name): it creates or updates each and
// deletes the others.
func (l *lab) setPolicies(nps ...*networkingv1.NetworkPolicy) {
	t, ctx := l.t, context.Background()
	t.Helper()
	keep := map[string]bool{}
	for _, np := range nps {
		np = np.DeepCopy()
		np.Namespace = l.kns(np.Namespace)
		keep[np.Namespace+"/"+np.Name] = true
		api := l.cs.NetworkingV1().NetworkPolicies(np.Namespace)
		old, err := api.Get(ctx, np.Name, metav1.GetOptions{})
		if err == nil {
			np.ResourceVersion = old.ResourceVersion
			_, err = api.Update(ctx, np, metav1.UpdateOptions{})
		} else {
			_, err = api.Create(ctx, np, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("network policy %s/%s: %v", np.Namespace, np.Name, err)
		}
	}
	for _, short := range labNamespaces {
		list, err := l.cs.NetworkingV1().NetworkPolicies(l.kns(short)).List(ctx, metav1.ListOptions{})
		must(t, err)
		for _, np := range list.Items {
			if !keep[np.Namespace+"/"+np.Name] {
				must(t, l.cs.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}))
			}
		}
	}
}

// labelPod replaces the labels of pod "x/a".
func (l *lab) labelPod(name string, labels map[string]string) {
	t, ctx := l.t, context.Background()
	t.Helper()
	ns, n, _ := strings.Cut(name, "/")
	api := l.cs.CoreV1().Pods(l.kns(ns))
	p, err := api.Get(ctx, n, metav1.GetOptions{})
	must(t, err)
	p.Labels = labels
	_, err = api.Update(ctx, p, metav1.UpdateOptions{})
	must(t, err)
}

// labelNamespace replaces the labels of namespace short (the API server
// adds kubernetes.io/metadata.name).
func (l *lab) labelNamespace(short string, labels map[string]string) {
	t, ctx := l.t, context.Background()
	t.Helper()
	ns, err := l.cs.CoreV1().Namespaces().Get(ctx, l.kns(short), metav1.GetOptions{})
	must(t, err)
	ns.Labels = labels
	_, err = l.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	must(t, err)
}

// resetLabels gives every pod and namespace its original labels.
func (l *lab) resetLabels() {
	for _, ns := range labNamespaces {
		l.labelNamespace(ns, map[string]string{"ns": ns})
		for _, p := range labPods {
			l.labelPod(ns+"/"+p, map[string]string{"pod": p})
		}
	}
}
