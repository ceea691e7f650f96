package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/testenv/gobuild"
	"github.com/podnet/podnet/internal/testenv/refbin"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/veth"
)

var pluginDir string

func TestMain(m *testing.M) { gobuild.TestMain(m, &pluginDir, "podnet-bridge", "../podnet-bridge") }

// addPod attaches a new named pod namespace to node with the given plugin
// type ("podnet-bridge" or the reference "bridge") through libcni.
func addPod(t *testing.T, node *netns.NS, plugin, dataDir string) (*netns.NS, netip.Addr) {
	t.Helper()
	pod := nstest.NewNamed(t)
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net-%s","type":%q,"bridge":"cnio0","isGateway":true,"ipMasq":true,
		"ipam":{"type":"host-local","ranges":[[{"subnet":"10.200.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}}`, plugin, plugin, dataDir)
	pc, err := libcni.NetworkPluginConfFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{pluginDir, refbin.Dir()}, t.TempDir(), nil)
	rt := &libcni.RuntimeConf{ContainerID: "c-" + pod.Name(), NetNS: pod.Path(), IfName: "eth0"}
	var res *current.Result
	err = node.Do(func() error {
		r, err := cni.AddNetwork(context.Background(), pc, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		t.Fatalf("ADD with %s: %v", plugin, err)
	}
	t.Cleanup(func() {
		node.Do(func() error { return cni.DelNetwork(context.Background(), pc, rt) })
	})
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	return pod, ip
}

func inspectJSON(t *testing.T, args ...string) (*Report, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(append([]string{"--json"}, args...), &out, &errOut); code != 0 {
		t.Fatalf("podnet-inspect %v: exit %d: %s", args, code, errOut.String())
	}
	var r Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, out.String())
	}
	return &r, out.String()
}

func TestInspectPods(t *testing.T) {
	refbin.Path(t, "bridge")
	for _, plugin := range []string{"podnet-bridge", "bridge"} {
		t.Run(plugin, func(t *testing.T) {
			node := nstest.NewNamed(t)
			// An outside host to talk to, so conntrack has a translated flow.
			srv := serveOutside(t, node)
			defer srv.Close()

			dataDir := t.TempDir()
			pod, ip := addPod(t, node, plugin, dataDir)
			_, other := addPod(t, node, plugin, dataDir)
			if _, err := probe.Ask(pod, "tcp", srv.Addr, 3*time.Second); err != nil {
				t.Fatal(err)
			}
			// A process in the pod, found by PID.
			sleep := startSleep(t, pod)
			defer func() { sleep.Process.Kill(); sleep.Wait() }()

			for _, arg := range []string{pod.Name(), pod.Path(), fmt.Sprint(sleep.Process.Pid)} {
				r, raw := inspectJSON(t, "--node", node.Path(), arg)
				checkReportedPod(t, arg, r, raw, pod, ip, sleep.Process.Pid)
				checkReportedPath(t, arg, r, pod, node, ip)
			}
			_ = other
			// The text form tells the same story.
			var text, errOut bytes.Buffer
			if run([]string{"--node", node.Path(), pod.Name()}, &text, &errOut) != 0 || !strings.Contains(text.String(), "← this pod") {
				t.Errorf("text output:\n%s%s", text.String(), errOut.String())
			}
		})
	}
}

// serveOutside connects node by ens0 (10.240.0.20/24) to a new outside
// namespace (10.240.0.99/24) and serves a probe there on port 8080.
func serveOutside(t *testing.T, node *netns.NS) *probe.Server {
	t.Helper()
	out := nstest.New(t)
	if _, err := veth.Create(node, veth.Spec{Name: "ens0", PeerName: "eth0", PeerNS: out}); err != nil {
		t.Fatal(err)
	}
	addr.Ensure(node, "ens0", netip.MustParsePrefix("10.240.0.20/24"))
	addr.Ensure(out, "eth0", netip.MustParsePrefix("10.240.0.99/24"))
	srv, err := probe.Serve(out, netip.MustParseAddrPort("10.240.0.99:8080"), "outside")
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// startSleep starts "sleep 60" inside pod; the caller kills it.
func startSleep(t *testing.T, pod *netns.NS) *exec.Cmd {
	t.Helper()
	var sleep *exec.Cmd
	if err := pod.Do(func() error {
		sleep = exec.Command("sleep", "60")
		return sleep.Start()
	}); err != nil {
		t.Fatal(err)
	}
	return sleep
}

// checkReportedPod checks the report on pod, asked for by arg, against the
// pod: its address ip, its name, and the process pid (sleep).
func checkReportedPod(t *testing.T, arg string, r *Report, raw string, pod *netns.NS, ip netip.Addr, pid int) {
	t.Helper()
	if !slices.Contains(r.Addresses, ip) {
		t.Fatalf("%s: addresses %v, want %v\n%s", arg, r.Addresses, ip, raw)
	}
	if !slices.Contains(r.Pod.Names, pod.Name()) {
		t.Errorf("%s: names %v", arg, r.Pod.Names)
	}
	if !slices.ContainsFunc(r.Pod.Processes, func(p Process) bool { return p.PID == pid && p.Command == "sleep" }) {
		t.Errorf("%s: processes %v lack sleep %d", arg, r.Pod.Processes, pid)
	}
}

// checkReportedPath checks the report's path from pod (address ip) to
// node against the kernel: the veth to cnio0 with two ports, the routes
// both ways, the masquerade rule and the masqueraded flow to the outside
// host; and that there is no warning.
func checkReportedPath(t *testing.T, arg string, r *Report, pod, node *netns.NS, ip netip.Addr) {
	t.Helper()
	v := r.Veth
	if v == nil || v.Bridge != "cnio0" || v.HostVeth == "" || len(v.Ports) != 2 {
		t.Fatalf("%s: veth path %+v", arg, v)
	}
	host, err := veth.Peer(pod, "eth0", node)
	if err != nil || host.Name != v.HostVeth || host.Index != v.PeerIndex {
		t.Errorf("%s: host veth %+v, report says %s/%d", arg, host, v.HostVeth, v.PeerIndex)
	}
	if !slices.Contains(v.BridgeAddrs, "10.200.0.1/24") {
		t.Errorf("bridge addresses %v", v.BridgeAddrs)
	}
	if !slices.ContainsFunc(r.PodRoutes, func(s string) bool { return strings.HasPrefix(s, "default via 10.200.0.1") }) {
		t.Errorf("pod routes %v", r.PodRoutes)
	}
	if len(r.NodeRoutes) != 1 || !strings.Contains(r.NodeRoutes[0].Route, "dev cnio0") {
		t.Errorf("node routes %+v", r.NodeRoutes)
	}
	if !slices.ContainsFunc(r.NATRules, func(n NATRule) bool {
		return n.Table == "nat" && strings.Contains(n.Rule, "10.200.0.")
	}) {
		t.Errorf("no masquerade rule found: %+v", r.NATRules)
	}
	want := fmt.Sprintf("src=%s dst=10.240.0.99", ip)
	if !slices.ContainsFunc(r.Conntrack, func(s string) bool {
		return strings.Contains(s, want) && strings.Contains(s, "dst=10.240.0.20")
	}) {
		t.Errorf("conntrack %q lacks the masqueraded flow %q", r.Conntrack, want)
	}
	for _, w := range r.Warnings {
		t.Errorf("warning: %s", w)
	}
}

func TestInspectErrors(t *testing.T) {
	lonely := nstest.NewNamed(t) // no veth inside
	for _, c := range []struct {
		arg, want string
	}{
		{"999999999", "no process with PID 999999999"},
		{"/nonexistent/ns", "no namespace at /nonexistent/ns"},
		{"podnet-no-such-ns", `no namespace named "podnet-no-such-ns"`},
		{lonely.Name(), "has no veth interface"},
	} {
		var out, errOut bytes.Buffer
		code := run([]string{c.arg}, &out, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), c.want) || strings.Contains(errOut.String(), "goroutine") {
			t.Errorf("inspect %s: exit %d, stderr %q; want 1 and %q", c.arg, code, errOut.String(), c.want)
		}
	}
}

// TestInspectServicePath: a Service whose endpoint is the pod shows in the
// report under either service proxy backend: as the DNAT rule of its
// iptables chain, or as the elements of the nftables table that lead to
// the pod.
func TestInspectServicePath(t *testing.T) {
	for _, mode := range []service.Mode{service.ModeIptables, service.ModeNftables} {
		t.Run(string(mode), func(t *testing.T) {
			node := nstest.NewNamed(t)
			pod, ip := addPod(t, node, "podnet-bridge", t.TempDir())
			backend, err := service.NewBackend(mode, node)
			if err != nil {
				t.Fatal(err)
			}
			p, err := service.New(service.Config{Backend: backend, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Cleanup(context.Background()) })
			if err := p.Update(service.Service{Name: service.Name{Namespace: "default", Name: "web"}, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")},
				Ports:     []service.Port{{Protocol: service.TCP, Port: 80, TargetPort: 8080}},
				Endpoints: []service.Endpoint{{Addr: ip, Ready: true, Serving: true}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			r, raw := inspectJSON(t, "--node", node.Path(), pod.Name())
			if mode == service.ModeIptables {
				if !slices.ContainsFunc(r.NATRules, func(n NATRule) bool { return strings.Contains(n.Rule, "--to-destination "+ip.String()+":8080") }) {
					t.Errorf("no DNAT to the pod:\n%s", raw)
				}
				return
			}
			want := fmt.Sprintf("ip-backends: 10.96.0.30 . tcp . 80 . 0 : %s . 8080", ip)
			if !slices.Contains(r.ServiceElements, ServiceElement{Table: "ip podnet-proxy", Element: want}) {
				t.Errorf("no %q:\n%s", want, raw)
			}
			var text, errOut bytes.Buffer
			if run([]string{"--node", node.Path(), pod.Name()}, &text, &errOut) != 0 || !strings.Contains(text.String(), "ip podnet-proxy: "+want) {
				t.Errorf("text output:\n%s%s", text.String(), errOut.String())
			}
		})
	}
}
