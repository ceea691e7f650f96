package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/internal/testenv/gobuild"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

var binDir string

func TestMain(m *testing.M) {
	gobuild.TestMainRun(m, &binDir, "podnet-agent", ".", kubetest.Run)
}

const clusterCIDR = "10.200.0.0/16"

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds, for up to d; the failure shows the
// last state cond described.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("after %v, still not %s; last state:\n%s", d, what, state)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// lab is the article's topology in namespaces: worker nodes on a switch
// (10.240.0.0/24), an outside host on it at 10.240.0.100, and a Node
// object per worker on the shared API server.
type lab struct {
	t       *testing.T
	cp      *kubetest.ControlPlane
	cs      kubernetes.Interface
	sw      *netns.NS
	outside *netns.NS
	prefix  string
	nodes   []*node
}

type node struct {
	l       *lab
	i       int
	name    string
	ns      *netns.NS
	ip      netip.Addr   // InternalIP on the switch
	podCIDR netip.Prefix // 10.200.i.0/24
	confDir string
	socket  string    // --policy-socket, in a directory of the test's
	pod     *netns.NS // one pod behind cnio0, at 10.200.i.2
	podIP   netip.Addr
	agent   *agentProc
}

func newLab(t *testing.T, workers int) *lab {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	must(t, err)
	l := &lab{t: t, cp: cp, cs: cs, sw: nstest.New(t), outside: nstest.New(t), prefix: strings.ToLower(t.Name())}
	_, err = bridge.Ensure(l.sw, bridge.Spec{Name: "sw"})
	must(t, err)
	l.plug("out", l.outside, netip.MustParsePrefix("10.240.0.100/24"))
	for i := range workers {
		l.addNode(i)
	}
	t.Cleanup(func() {
		for _, n := range l.nodes {
			cs.CoreV1().Nodes().Delete(context.Background(), n.name, metav1.DeleteOptions{})
		}
	})
	return l
}

// plug connects ns to the switch as eth0 with address a.
func (l *lab) plug(port string, ns *netns.NS, a netip.Prefix) {
	_, err := veth.Create(l.sw, veth.Spec{Name: port, PeerName: "eth0", PeerNS: ns})
	must(l.t, err)
	must(l.t, bridge.Attach(l.sw, "sw", port, bridge.PortOptions{}))
	must(l.t, addr.Ensure(ns, "eth0", a))
}

// addNode makes worker i: a named namespace on the switch at 10.240.0.(10+i)
// with one pod behind cnio0 (what podnet-bridge would make), and its Node
// object with podCIDR 10.200.i.0/24 and its InternalIP.
func (l *lab) addNode(i int) *node {
	t := l.t
	n := &node{l: l, i: i, name: fmt.Sprintf("%s-n%d", l.prefix, i), ns: nstest.NewNamed(t),
		ip:      netip.AddrFrom4([4]byte{10, 240, 0, byte(10 + i)}),
		podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i), 0}), 24),
		confDir: t.TempDir(), socket: filepath.Join(t.TempDir(), "policy.sock"),
		pod: nstest.New(t), podIP: netip.AddrFrom4([4]byte{10, 200, byte(i), 2})}
	l.plug(fmt.Sprintf("n%d", i), n.ns, netip.PrefixFrom(n.ip, 24))
	_, err := bridge.Ensure(n.ns, bridge.Spec{Name: "cnio0"})
	must(t, err)
	must(t, bridge.EnsureAddr(n.ns, "cnio0", netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i), 1}), 24), bridge.AddrOptions{}))
	_, err = veth.Create(n.ns, veth.Spec{Name: "vethpod", PeerName: "eth0", PeerNS: n.pod})
	must(t, err)
	must(t, bridge.Attach(n.ns, "cnio0", "vethpod", bridge.PortOptions{}))
	must(t, addr.Ensure(n.pod, "eth0", netip.PrefixFrom(n.podIP, 24)))
	must(t, route.EnsureDefault(n.pod, netip.AddrFrom4([4]byte{10, 200, byte(i), 1}), "eth0"))
	l.nodes = append(l.nodes, n)
	l.createNode(n.name, []string{n.podCIDR.String()}, n.ip.String())
	return n
}

// createNode creates a Node object with podCIDRs and, when ip is not "",
// an InternalIP.
func (l *lab) createNode(name string, podCIDRs []string, ip string) {
	ctx := context.Background()
	obj, err := l.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.NodeSpec{PodCIDRs: podCIDRs, PodCIDR: first(podCIDRs)}}, metav1.CreateOptions{})
	must(l.t, err)
	if ip != "" {
		obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
		_, err = l.cs.CoreV1().Nodes().UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		must(l.t, err)
	}
}

func (l *lab) deleteNode(name string) {
	must(l.t, l.cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}))
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// agentProc is a running podnet-agent.
type agentProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

func (n *node) start(extra ...string) *agentProc {
	args := append([]string{"--kubeconfig", n.l.cp.Kubeconfig, "--node-name", n.name, "--netns", n.ns.Path(),
		"--cni-conf-dir", n.confDir, "--cluster-cidr", clusterCIDR, "--resync-period", "1s", "--policy-socket", n.socket}, extra...)
	a := &agentProc{t: n.l.t, log: &syncBuffer{}, done: make(chan error, 1)}
	a.cmd = exec.Command(filepath.Join(binDir, "podnet-agent"), args...)
	a.cmd.Stderr = a.log
	must(a.t, a.cmd.Start())
	go func() { a.done <- a.cmd.Wait() }()
	n.agent = a
	a.t.Cleanup(a.stop)
	return a
}

func (a *agentProc) stop() {
	if a.cmd.ProcessState != nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
	}
}

func (a *agentProc) alive() {
	a.t.Helper()
	select {
	case err := <-a.done:
		a.t.Fatalf("agent exited: %v\n%s", err, a.log.String())
	default:
	}
}

// routes lists n's routes with the agent's protocol as "DST via GW".
func (n *node) routes() []string {
	rs, err := route.List(n.ns, route.Filter{Protocol: route.ProtocolPodnet})
	must(n.l.t, err)
	var out []string
	for _, r := range rs {
		out = append(out, r.Dst.String()+" via "+r.Gateway.String())
	}
	slices.Sort(out)
	return out
}

// hasRoutes waits until n's agent routes are exactly want.
func (n *node) hasRoutes(what string, want ...string) time.Duration {
	n.l.t.Helper()
	slices.Sort(want)
	return eventually(n.l.t, 10*time.Second, what, func() (bool, string) {
		got := n.routes()
		return slices.Equal(got, want), fmt.Sprintf("routes %q, want %q\nagent log:\n%s", got, want, n.agent.log.String())
	})
}

func (n *node) masq() nat.NetworkMasquerade {
	return nat.NetworkMasquerade{Network: MasqueradeNetwork, Subnets: []netip.Prefix{n.podCIDR},
		Exempt: []netip.Prefix{netip.MustParsePrefix(clusterCIDR)}, RandomFully: true}
}

// ready waits for n's conflist, masquerade rules and Node condition.
func (n *node) ready() {
	n.l.t.Helper()
	k := nat.IPTables(ipt(n.ns))
	eventually(n.l.t, 20*time.Second, n.name+" ready", func() (bool, string) {
		n.agent.alive()
		if _, err := os.Stat(filepath.Join(n.confDir, ConflistName)); err != nil {
			return false, err.Error() + "\n" + n.agent.log.String()
		}
		if err := n.masq().Check(context.Background(), k); err != nil {
			return false, err.Error() + "\n" + n.agent.log.String()
		}
		c := n.l.condition(n.name)
		return c != nil && c.Status == corev1.ConditionFalse && c.Reason == ReadyReason, fmt.Sprintf("condition %+v\n%s", c, n.agent.log.String())
	})
}

func (l *lab) condition(name string) *corev1.NodeCondition {
	obj, err := l.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	for _, c := range obj.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			return &c
		}
	}
	return nil
}

// source asks dst from n's pod and returns the client address the server saw.
func (n *node) source(dst netip.AddrPort) netip.Addr {
	n.l.t.Helper()
	r, err := probe.Poll(n.pod, "tcp", dst, 10*time.Second)
	must(n.l.t, err)
	return r.Source.Addr()
}

// TestAgentHostGW: three agents on three nodes route each other's pods
// (host-gw) with their Node conditions set; pod traffic inside the cluster
// CIDR keeps the pod's address and traffic to the outside host leaves with
// the node's; routes and rules flushed by hand come back within a resync
// period; Nodes added, deleted, without InternalIP, or deleted while the
// agent was stopped are followed.
func TestAgentHostGW(t *testing.T) {
	l := newLab(t, 3)
	for _, n := range l.nodes {
		n.start()
	}
	n0, n1, n2 := l.nodes[0], l.nodes[1], l.nodes[2]
	for _, n := range l.nodes {
		n.ready()
	}
	n0.hasRoutes("routes to n1 and n2", "10.200.1.0/24 via 10.240.0.11", "10.200.2.0/24 via 10.240.0.12")
	n1.hasRoutes("routes to n0 and n2", "10.200.0.0/24 via 10.240.0.10", "10.200.2.0/24 via 10.240.0.12")

	srv1, err := probe.Serve(n1.pod, netip.AddrPortFrom(n1.podIP, 8080), "pod1")
	must(t, err)
	defer srv1.Close()
	out, err := probe.Serve(l.outside, netip.MustParseAddrPort("10.240.0.100:8080"), "outside")
	must(t, err)
	defer out.Close()
	if got := n0.source(netip.AddrPortFrom(n1.podIP, 8080)); got != n0.podIP {
		t.Errorf("pod on n1 saw %v, want the pod address %v (inside the cluster CIDR, not masqueraded)", got, n0.podIP)
	}
	if got := n0.source(netip.MustParseAddrPort("10.240.0.100:8080")); got != n0.ip {
		t.Errorf("outside host saw %v, want n0's address %v (masqueraded)", got, n0.ip)
	}

	// Someone flushes the nat table and the agent's routes.
	ctx := context.Background()
	flushed := time.Now()
	_, err = execns.Output(ctx, n0.ns, nil, "iptables", "-t", "nat", "-F")
	must(t, err)
	_, err = execns.Output(ctx, n0.ns, nil, "ip", "route", "flush", "proto", fmt.Sprint(uint8(route.ProtocolPodnet)))
	must(t, err)
	if len(n0.routes()) != 0 {
		t.Fatal("ip route flush left routes")
	}
	n0.hasRoutes("routes restored", "10.200.1.0/24 via 10.240.0.11", "10.200.2.0/24 via 10.240.0.12")
	k := nat.IPTables(ipt(n0.ns))
	eventually(t, 5*time.Second, "masquerade restored", func() (bool, string) {
		err := n0.masq().Check(ctx, k)
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("routes and masquerade back %v after the flush (resync period 1s)", time.Since(flushed).Round(time.Millisecond))
	if got := n0.source(netip.MustParseAddrPort("10.240.0.100:8080")); got != n0.ip {
		t.Errorf("after repair, outside host saw %v, want %v", got, n0.ip)
	}

	// A new Node, one without InternalIP, one off the switch's subnet.
	l.createNode(l.prefix+"-extra", []string{"10.200.9.0/24"}, "10.240.0.19")
	l.createNode(l.prefix+"-noip", []string{"10.200.10.0/24"}, "")
	l.createNode(l.prefix+"-far", []string{"10.200.11.0/24"}, "192.0.2.7")
	t.Cleanup(func() {
		for _, s := range []string{"-extra", "-noip", "-far"} {
			l.cs.CoreV1().Nodes().Delete(context.Background(), l.prefix+s, metav1.DeleteOptions{})
		}
	})
	n0.hasRoutes("route to the new Node", "10.200.1.0/24 via 10.240.0.11", "10.200.2.0/24 via 10.240.0.12", "10.200.9.0/24 via 10.240.0.19")
	eventually(t, 5*time.Second, "warnings about the Nodes without a usable InternalIP", func() (bool, string) {
		log := n0.agent.log.String()
		return strings.Contains(log, "no IPv4 InternalIP") && strings.Contains(log, "192.0.2.7 is not on a directly connected subnet"), log
	})

	// A deleted Node's route goes.
	l.deleteNode(n2.name)
	n0.hasRoutes("n2's route removed", "10.200.1.0/24 via 10.240.0.11", "10.200.9.0/24 via 10.240.0.19")

	// A Node deleted while the agent is stopped: its route goes when the
	// agent starts again. Stopping leaves everything in place.
	n0.agent.stop()
	l.deleteNode(l.prefix + "-extra")
	if got := n0.routes(); !slices.Contains(got, "10.200.9.0/24 via 10.240.0.19") {
		t.Fatalf("stopping the agent removed its routes: %q", got)
	}
	n0.start()
	n0.hasRoutes("the route of the Node deleted while the agent was down removed", "10.200.1.0/24 via 10.240.0.11")
	n0.agent.alive()
	n1.agent.alive()
}

// TestAgentConflist: the conflist is the golden one, replaced atomically
// (a new file renamed over the old, no temporary left behind) when
// someone changes it, and not rewritten when it is right.
func TestAgentConflist(t *testing.T) {
	l := newLab(t, 1)
	n := l.nodes[0]
	n.start("--ipam-data-dir", "/var/lib/podnet-test/networks", "--metrics-addr", "127.0.0.1:0")
	n.ready()
	path := filepath.Join(n.confDir, ConflistName)
	got, err := os.ReadFile(path)
	must(t, err)
	want := `{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {
      "bridge": "cnio0",
      "hairpinMode": true,
      "ipMasq": false,
      "ipam": {
        "dataDir": "/var/lib/podnet-test/networks",
        "ranges": [
          [
            {
              "subnet": "10.200.0.0/24"
            }
          ]
        ],
        "routes": [
          {
            "dst": "0.0.0.0/0"
          }
        ],
        "type": "host-local"
      },
      "isGateway": true,
      "policySocket": "` + n.socket + `",
      "type": "podnet-bridge"
    },
    {
      "capabilities": {
        "portMappings": true
      },
      "snat": true,
      "type": "portmap"
    }
  ]
}
`
	if string(got) != want {
		t.Fatalf("conflist:\n%s\nwant:\n%s", got, want)
	}
	before := inode(t, path)
	// Several resyncs later the file is the same file.
	eventually(t, 10*time.Second, "three more reconciles", func() (bool, string) {
		r := reconciles(t, n)
		return r >= 4, fmt.Sprint("reconciles: ", r)
	})
	if inode(t, path) != before {
		t.Error("a conflist that was right was rewritten")
	}
	// Someone truncates it: the agent writes a new file and renames it over.
	must(t, os.WriteFile(path, []byte("{"), 0o644))
	broken := inode(t, path)
	eventually(t, 5*time.Second, "conflist restored", func() (bool, string) {
		b, _ := os.ReadFile(path)
		return string(b) == want, string(b)
	})
	if inode(t, path) == broken {
		t.Error("the conflist was rewritten in place, not replaced by rename")
	}
	des, err := os.ReadDir(n.confDir)
	must(t, err)
	if len(des) != 1 {
		t.Errorf("conf dir holds %d entries, want only %s", len(des), ConflistName)
	}
}

// TestConflistDualStack: two podCIDRs give two range sets and both
// default routes.
func TestConflistDualStack(t *testing.T) {
	b, err := conflist(conflistSpec{Bridge: "cnio0", IPAM: "host-local",
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.1.0/24"), netip.MustParsePrefix("fd00:200:1::/64")}})
	must(t, err)
	var doc struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Ranges [][]struct{ Subnet string } `json:"ranges"`
				Routes []struct{ Dst string }      `json:"routes"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	must(t, json.Unmarshal(b, &doc))
	ipam := doc.Plugins[0].IPAM
	if len(ipam.Ranges) != 2 || ipam.Ranges[0][0].Subnet != "10.200.1.0/24" || ipam.Ranges[1][0].Subnet != "fd00:200:1::/64" ||
		len(ipam.Routes) != 2 || ipam.Routes[1].Dst != "::/0" {
		t.Errorf("dual-stack conflist:\n%s", b)
	}
	if _, err := conflist(conflistSpec{Bridge: "cnio0", IPAM: "host-local"}); err == nil {
		t.Error("a conflist without podCIDRs")
	}
}

// TestAgentLatePodCIDR: until the Node has a podCIDR the agent writes
// nothing, says why and shows it as a metric; when the podCIDR comes, it
// configures the node.
func TestAgentLatePodCIDR(t *testing.T) {
	l := newLab(t, 0)
	name := l.prefix + "-late"
	l.createNode(name, nil, "10.240.0.10")
	t.Cleanup(func() { l.cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	n := &node{l: l, name: name, ns: nstest.NewNamed(t), confDir: t.TempDir(), podCIDR: netip.MustParsePrefix("10.200.5.0/24")}
	n.start("--metrics-addr", "127.0.0.1:0")
	eventually(t, 10*time.Second, "a log line and metric saying the podCIDR is missing", func() (bool, string) {
		n.agent.alive()
		m := metricsOf(t, n)
		return strings.Contains(n.agent.log.String(), "no podCIDR yet") && strings.Contains(m, "podnet_agent_waiting_for_pod_cidr 1") && reconciles(t, n) >= 2, n.agent.log.String() + m
	})
	if des, _ := os.ReadDir(n.confDir); len(des) != 0 {
		t.Fatalf("a conflist written before the Node had a podCIDR")
	}
	if c := l.condition(name); c != nil {
		t.Fatalf("NetworkUnavailable set before the podCIDR: %+v", c)
	}
	obj, err := l.cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	must(t, err)
	obj.Spec.PodCIDR, obj.Spec.PodCIDRs = "10.200.5.0/24", []string{"10.200.5.0/24"}
	_, err = l.cs.CoreV1().Nodes().Update(context.Background(), obj, metav1.UpdateOptions{})
	must(t, err)
	n.ready()
	if m := metricsOf(t, n); !strings.Contains(m, "podnet_agent_waiting_for_pod_cidr 0") || !strings.Contains(m, "podnet_agent_ready 1") {
		t.Errorf("metrics after the podCIDR came:\n%s", m)
	}
	resp, err := http.Get("http://" + metricsAddr(t, n) + "/healthz")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}
}

// TestAgentUnreachableAtStart: started while the API server is down, the
// agent says so, keeps retrying without exiting, and configures the node
// once the API server is back.
func TestAgentUnreachableAtStart(t *testing.T) {
	l := newLab(t, 1)
	n := l.nodes[0]
	must(t, l.cp.StopAPIServer())
	restarted := false
	defer func() {
		if !restarted {
			l.cp.StartAPIServer(context.Background())
		}
	}()
	n.start()
	eventually(t, 20*time.Second, "a clear error about the API server", func() (bool, string) {
		n.agent.alive()
		return strings.Contains(n.agent.log.String(), "cannot reach the API server"), n.agent.log.String()
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must(t, l.cp.StartAPIServer(ctx))
	restarted = true
	n.ready()
}

// TestAgentLegacyNode: on a node whose kubelet uses iptables-legacy (its
// canary chain is there), the masquerade rules go to legacy and none to
// nft; --cleanup removes rules, routes and the conflist.
func TestAgentLegacyNode(t *testing.T) {
	l := newLab(t, 2)
	n0 := l.nodes[0]
	ctx := context.Background()
	_, err := execns.Output(ctx, n0.ns, nil, "iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
	if err != nil {
		t.Skipf("no iptables-legacy here: %v", err)
	}
	n0.start()
	eventually(t, 20*time.Second, "masquerade in iptables-legacy", func() (bool, string) {
		n0.agent.alive()
		out, _ := execns.Output(ctx, n0.ns, nil, "iptables-legacy-save", "-t", "nat")
		return bytes.Contains(out, []byte("PODNET-MASQ")), string(out) + n0.agent.log.String()
	})
	n0.hasRoutes("route to n1", "10.200.1.0/24 via 10.240.0.11")
	if out, _ := execns.Output(ctx, n0.ns, nil, "iptables-nft-save", "-t", "nat"); bytes.Contains(out, []byte("PODNET")) {
		t.Errorf("rules written to iptables-nft too:\n%s", out)
	}
	if !strings.Contains(n0.agent.log.String(), "mode=legacy") {
		t.Errorf("the detected mode is not logged:\n%s", n0.agent.log.String())
	}
	n0.agent.stop()
	cmd := exec.Command(filepath.Join(binDir, "podnet-agent"), "--netns", n0.ns.Path(), "--cni-conf-dir", n0.confDir, "--cleanup")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, b)
	}
	if out, _ := execns.Output(ctx, n0.ns, nil, "iptables-legacy-save", "-t", "nat"); bytes.Contains(out, []byte("PODNET")) {
		t.Errorf("--cleanup left rules:\n%s", out)
	}
	if got := n0.routes(); len(got) != 0 {
		t.Errorf("--cleanup left routes %q", got)
	}
	if _, err := os.Stat(filepath.Join(n0.confDir, ConflistName)); !os.IsNotExist(err) {
		t.Errorf("--cleanup left the conflist: %v", err)
	}
}

// TestAgentBadFlags: bad flags are refused before anything changes.
func TestAgentBadFlags(t *testing.T) {
	ns := nstest.NewNamed(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--kubeconfig", "/nonexistent"}, "--cluster-cidr is required"},
		{[]string{"--cluster-cidr", "10.200.0.0/33"}, "--cluster-cidr"},
		{[]string{"--cluster-cidr", "0.0.0.0/0"}, "every destination"},
		{[]string{"--cluster-cidr", clusterCIDR, "--iptables-mode", "xt"}, "--iptables-mode"},
		{[]string{"--cluster-cidr", clusterCIDR, "--route-protocol", "2"}, "--route-protocol"},
		{[]string{"--cluster-cidr", clusterCIDR, "--admin-network-policy", "yes"}, "--admin-network-policy"},
		{[]string{"--cluster-cidr", clusterCIDR, "--kubeconfig", "/nonexistent"}, "kubeconfig"},
	} {
		dir := t.TempDir()
		cmd := exec.Command(filepath.Join(binDir, "podnet-agent"), append([]string{"--netns", ns.Path(), "--cni-conf-dir", dir}, c.args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: err %v, output %s; want an error with %q", c.args, err, out, c.want)
		}
		if des, _ := os.ReadDir(dir); len(des) != 0 {
			t.Errorf("%v: wrote into the conf dir", c.args)
		}
	}
	if out, _ := execns.Output(context.Background(), ns, nil, "iptables-save", "-t", "nat"); bytes.Contains(out, []byte("PODNET")) {
		t.Errorf("bad flags left rules:\n%s", out)
	}
}

func ipt(ns *netns.NS) *iptables.Kernel { return iptables.NewKernel(ns) }

func inode(t *testing.T, path string) uint64 {
	var st syscall.Stat_t
	must(t, syscall.Stat(path, &st))
	return st.Ino
}

// metricsAddr is where n's agent serves metrics (it logs the address).
func metricsAddr(t *testing.T, n *node) string {
	for line := range strings.SplitSeq(n.agent.log.String(), "\n") {
		if strings.Contains(line, "serving metrics") {
			_, a, _ := strings.Cut(line, "addr=")
			a, _, _ = strings.Cut(a, " ")
			return a
		}
	}
	return ""
}

func metricsOf(t *testing.T, n *node) string {
	a := metricsAddr(t, n)
	if a == "" {
		return ""
	}
	resp, err := http.Get("http://" + a + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// reconciles counts the agent's successful reconciles, from its metrics or,
// without them, from nothing (0).
func reconciles(t *testing.T, n *node) int {
	for line := range strings.SplitSeq(metricsOf(t, n), "\n") {
		if v, ok := strings.CutPrefix(line, `podnet_agent_reconciles_total{result="ok"} `); ok {
			var f float64
			fmt.Sscan(v, &f)
			return int(f)
		}
	}
	return 0
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
