package deploy

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/policy/cnisock"
	"github.com/podnet/podnet/route"
)

// The node's address on its link, and its neighbour's: nstest.NewPair's.
var (
	nodeIP = netip.MustParseAddr("10.99.0.1")
	peerIP = netip.MustParseAddr("10.99.0.2")
)

// conflistName is the file podnet-agent writes.
const conflistName = "10-podnet.conflist"

// agentJob: the agent follows Nodes — its own Node's podCIDR gives the
// conflist (naming its policy socket) and the NetworkUnavailable=False
// condition, a Node added later gives a route to its podCIDR via its
// InternalIP —, enforces a NetworkPolicy and an AdminNetworkPolicy on a
// pod of its node (the CRDs are served when it starts), answers
// an ADD on its policy socket, and answers its probes.
var agentJob = &job{
	prepare: func(r *run) {
		createNode(r, r.node, map[string]string{}, fmt.Sprintf("10.244.%d.0/24", 2*r.id), nodeIP)
		preparePolicyPod(r)
	},
	// The conflist goes to the test's directory, not the machine's
	// /etc/cni/net.d (the manifest's hostPath).
	args: func(r *run) []string { return []string{"--cni-conf-dir=" + r.dir} },
	do: func(r *run) error {
		ctx := context.Background()
		err := r.await("the agent sets NetworkUnavailable=False on its Node and writes the conflist", func() (bool, string) {
			n, err := r.cs.CoreV1().Nodes().Get(ctx, r.node, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			conf, err := os.ReadFile(filepath.Join(r.dir, conflistName))
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "PodnetReady" {
					return err == nil && strings.Contains(string(conf), `"podnet-host-local"`) &&
						strings.Contains(string(conf), `"policySocket": "`+cnisock.DefaultPath+`"`), fmt.Sprintf("conflist: %v %s", err, conf)
				}
			}
			return false, fmt.Sprintf("conditions %+v", n.Status.Conditions)
		})
		if err != nil {
			return err
		}
		other := fmt.Sprintf("10.244.%d.0/24", 2*r.id+1)
		createNode(r, r.node+"-peer", map[string]string{}, other, peerIP)
		err = r.await("the agent routes the podCIDR of a Node added later", func() (bool, string) {
			rs, err := route.List(r.ns, route.Filter{Protocol: route.ProtocolPodnet})
			if err != nil {
				return false, err.Error()
			}
			for _, rt := range rs {
				if rt.Dst.String() == other && rt.Gateway == peerIP {
					return true, ""
				}
			}
			return false, fmt.Sprint(rs)
		})
		if err != nil {
			return err
		}
		if err := policyStep(r); err != nil {
			return err
		}
		if err := adminStep(r); err != nil {
			return err
		}
		if err := socketStep(r); err != nil {
			return err
		}
		return r.probesAnswer()
	},
	variants: []variant{{}},
}

// proxyJob: the proxy programs a Service that exists when it starts and
// one created later (its endpoint a server on the neighbour), as a
// connection from the node to each cluster IP shows, and answers its
// probes. It runs on both backends.
var proxyJob = &job{
	prepare: func(r *run) {
		srv, err := probe.Serve(r.peer, netip.AddrPortFrom(peerIP, 8080), "pod")
		must(r.t, err)
		r.clean = append(r.clean, func() { srv.Close() })
		// A locally sent packet is routed before OUTPUT's DNAT: the service
		// range needs a route, as a node's default route gives it.
		must(r.t, route.Ensure(r.ns, route.Route{Dst: netip.MustParsePrefix("10.96.0.0/16"), Dev: "eth0"}))
		createNode(r, r.node, map[string]string{corev1.LabelTopologyZone: "zone-a"}, "", nodeIP)
		createNamespace(r)
	},
	do: func(r *run) error {
		first := createService(r, "first")
		if err := r.awaitAnswer("the proxy programs a Service that exists at its start", first); err != nil {
			return err
		}
		later := createService(r, "later")
		if err := r.awaitAnswer("the proxy programs a Service created later", later); err != nil {
			return err
		}
		if err := r.probesAnswer(); err != nil {
			return err
		}
		// kube-proxy's /proxyMode on the metrics address: the backend the
		// ConfigMap chose.
		url := "http://" + flagValue(r.c.Args, "metrics-addr") + "/proxyMode"
		return r.await("the proxy runs the ConfigMap's backend", func() (bool, string) {
			resp, err := r.httpClient().Get(url)
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			mode, _ := io.ReadAll(resp.Body)
			return string(mode) == r.config["proxy-backend"], fmt.Sprintf("%s: %q", url, mode)
		})
	},
	variants: []variant{
		{name: "", config: nil}, // the manifest's backend, nftables
		{name: "-iptables", config: map[string]string{"proxy-backend": "iptables"}},
	},
}

// awaitAnswer waits until a TCP connection from the node to dst reaches
// the server on the neighbour.
func (r *run) awaitAnswer(step string, dst netip.AddrPort) error {
	return r.await(step+" ("+dst.String()+")", func() (bool, string) {
		reply, err := probe.Ask(r.ns, "tcp", dst, 300*time.Millisecond)
		if err != nil {
			return false, err.Error()
		}
		return reply.Name == "pod", reply.Name
	})
}

// createNode creates a Node with labels, podCIDR (none if "") and
// InternalIP, deleted when the run ends.
func createNode(r *run, name string, labels map[string]string, podCIDR string, ip netip.Addr) {
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if podCIDR != "" {
		n.Spec = corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}
	}
	n, err := r.cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() { r.cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}) })
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: name}}
	_, err = r.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	must(r.t, err)
}

func (r *run) namespace() string { return fmt.Sprintf("deploy-run-%d", r.id) }

func createNamespace(r *run) {
	ctx := context.Background()
	_, err := r.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.namespace()}}, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() { r.cs.CoreV1().Namespaces().Delete(ctx, r.namespace(), metav1.DeleteOptions{}) })
}

// createService creates a ClusterIP Service, port 80 to 8080, with one
// ready endpoint on the neighbour, and returns its cluster IP and port.
// Both go when the run ends (no namespace controller runs to remove
// them with the namespace).
func createService(r *run, name string) netip.AddrPort {
	ctx := context.Background()
	ns := r.namespace()
	svc, err := r.cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	must(r.t, err)
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{peerIP.String()}, NodeName: ptr(r.node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)}}},
	}
	_, err = r.cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() {
		r.cs.DiscoveryV1().EndpointSlices(ns).Delete(ctx, name, metav1.DeleteOptions{})
		r.cs.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
	})
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
}
