package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/internal/testenv/gobuild"
	"github.com/podnet/podnet/internal/testenv/refbin"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// pluginDir holds the podnet-bridge binary built for this test run.
var pluginDir string

func TestMain(m *testing.M) { gobuild.TestMainRun(m, &pluginDir, "podnet-bridge", ".", kubetest.Run) }

// node is a throwaway node namespace with a CNI runtime (libcni, as
// containerd uses it) that runs plugins inside it.
type node struct {
	t        *testing.T
	ns       *netns.NS
	dataDir  string
	cacheDir string // the runtime's result cache
	cni      *libcni.CNIConfig
}

func newNode(t *testing.T) *node {
	t.Helper()
	ns := nstest.New(t)
	paths := []string{pluginDir}
	if _, err := os.Stat(filepath.Join(refbin.Dir(), "host-local")); err == nil {
		paths = append(paths, refbin.Dir())
	}
	cache := t.TempDir()
	return &node{
		t: t, ns: ns, dataDir: t.TempDir(), cacheDir: cache,
		cni: libcni.NewCNIConfigWithCacheDir(paths, cache, nil),
	}
}

// conf returns the Kubernetes The Hard Way bridge configuration for this node with the given
// changes applied (key → value; a nil value deletes the key).
func (n *node) conf(version string, changes map[string]any) []byte {
	c := map[string]any{
		"cniVersion": version,
		"name":       "bridge",
		"type":       "podnet-bridge",
		"bridge":     "cnio0",
		"isGateway":  true,
		"ipMasq":     false,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  []any{[]any{map[string]any{"subnet": "10.200.0.0/24"}}},
			"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
			"dataDir": n.dataDir,
		},
	}
	for k, v := range changes {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

func (n *node) plugin(conf []byte) *libcni.PluginConfig {
	n.t.Helper()
	pc, err := libcni.NetworkPluginConfFromBytes(conf)
	if err != nil {
		n.t.Fatal(err)
	}
	return pc
}

func runtimeConf(pod *netns.NS, id string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0"}
}

// in runs fn with the calling thread inside the node namespace, so the
// plugins libcni executes act on the node, as a runtime on that node would.
func (n *node) in(fn func(ctx context.Context) error) error {
	return n.ns.Do(func() error { return fn(context.Background()) })
}

func (n *node) add(conf []byte, rt *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := n.in(func(ctx context.Context) error {
		var err error
		res, err = n.cni.AddNetwork(ctx, n.plugin(conf), rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (n *node) del(conf []byte, rt *libcni.RuntimeConf) error {
	return n.in(func(ctx context.Context) error { return n.cni.DelNetwork(ctx, n.plugin(conf), rt) })
}

func (n *node) check(conf []byte, rt *libcni.RuntimeConf) error {
	return n.in(func(ctx context.Context) error { return n.cni.CheckNetwork(ctx, n.plugin(conf), rt) })
}

// leases lists the address files in the network's data directory.
func (n *node) leases(network string) []string {
	n.t.Helper()
	des, err := os.ReadDir(filepath.Join(n.dataDir, network))
	if err != nil && !os.IsNotExist(err) {
		n.t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if _, err := netip.ParseAddr(de.Name()); err == nil {
			out = append(out, de.Name())
		}
	}
	return out
}

// ports lists the names of cnio0's ports in the node.
func (n *node) ports() []string {
	n.t.Helper()
	ps, err := bridge.Ports(n.ns, "cnio0")
	if err != nil {
		n.t.Fatal(err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	return names
}

// vethsGone polls until the node has no veth left (DEL deletes retired
// pairs in a detached child, a few tens of milliseconds after returning)
// and reports what remains at the deadline.
func (n *node) vethsGone() []string {
	n.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		infos, err := link.List(n.ns)
		if err != nil {
			n.t.Fatal(err)
		}
		for _, l := range infos {
			if l.Type == "veth" && l.Name != "ens0" {
				left = append(left, l.Name)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustAdd(t *testing.T, n *node, conf []byte, pod *netns.NS, id string) *current.Result {
	t.Helper()
	res, err := n.add(conf, runtimeConf(pod, id))
	if err != nil {
		t.Fatalf("ADD %s: %v", id, err)
	}
	return res
}

func podIP(t *testing.T, res *current.Result) netip.Addr {
	t.Helper()
	if len(res.IPs) == 0 {
		t.Fatalf("result has no IPs: %+v", res)
	}
	return nl.Prefix(&res.IPs[0].Address).Addr()
}

func TestAddWiresPodsToBridge(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.1.0", nil)
	pods := []*netns.NS{nstest.New(t), nstest.New(t)}
	var ips []netip.Addr
	for i, pod := range pods {
		res := mustAdd(t, n, conf, pod, fmt.Sprintf("pod%d", i))
		ips = append(ips, podIP(t, res))

		// The result reports bridge, host veth and the pod's interface.
		if len(res.Interfaces) != 3 || res.Interfaces[0].Name != "cnio0" || res.Interfaces[2].Sandbox != pod.Path() {
			t.Fatalf("interfaces: %+v", res.Interfaces)
		}
		// Kernel state: eth0 in the pod carries the address, its peer is
		// the host veth on cnio0, default route via the gateway.
		have, err := addr.List(pod, "eth0")
		if err != nil || !slices.Contains(have, nl.Prefix(&res.IPs[0].Address)) {
			t.Fatalf("pod addresses %v (%v), want %v", have, err, res.IPs[0].Address)
		}
		host, err := veth.Peer(pod, "eth0", n.ns)
		if err != nil {
			t.Fatal(err)
		}
		br, _ := bridge.Get(n.ns, "cnio0")
		if host.Name != res.Interfaces[1].Name || host.Master != br.Index {
			t.Fatalf("host end %+v not on cnio0 (%d) or not %s", host, br.Index, res.Interfaces[1].Name)
		}
		rs, err := route.List(pod, route.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(rs, func(r route.Route) bool {
			return r.Dst.Bits() == 0 && r.Gateway == netip.MustParseAddr("10.200.0.1")
		}) {
			t.Fatalf("pod routes %v lack default via 10.200.0.1", rs)
		}
	}
	if ips[0] == ips[1] {
		t.Fatalf("both pods got %v", ips[0])
	}
	brAddrs, _ := bridge.Addrs(n.ns, "cnio0")
	if !slices.Contains(brAddrs, netip.MustParsePrefix("10.200.0.1/24")) {
		t.Fatalf("cnio0 addresses %v lack the gateway", brAddrs)
	}
	if on, _ := route.Forwarding(n.ns, 4); !on {
		t.Error("forwarding off in the node")
	}
	// Real traffic: pod to pod and pod to gateway.
	for _, dst := range []netip.Addr{ips[1], netip.MustParseAddr("10.200.0.1")} {
		if _, err := probe.Ping(pods[0], dst, 3*time.Second); err != nil {
			t.Errorf("pod0 → %v: %v", dst, err)
		}
	}
	if len(n.ports()) != 2 {
		t.Errorf("ports %v", n.ports())
	}
}

// TestEveryVersion adds and deletes a pod with each supported cniVersion
// and checks the result is in that version.
func TestEveryVersion(t *testing.T) {
	n := newNode(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		pod := nstest.New(t)
		conf := n.conf(v, nil)
		var raw types.Result
		err := n.in(func(ctx context.Context) error {
			var err error
			raw, err = n.cni.AddNetwork(ctx, n.plugin(conf), runtimeConf(pod, "v"+v))
			return err
		})
		if err != nil {
			t.Fatalf("ADD %s: %v", v, err)
		}
		if raw.Version() != v {
			t.Errorf("asked %s, result is %s", v, raw.Version())
		}
		res, err := current.NewResultFromResult(raw)
		if err != nil || len(res.IPs) != 1 {
			t.Fatalf("%s: %+v %v", v, res, err)
		}
		if v != "0.3.1" { // CHECK exists from 0.4.0 on
			if err := n.check(conf, runtimeConf(pod, "v"+v)); err != nil {
				t.Errorf("CHECK %s: %v", v, err)
			}
		}
		if err := n.del(conf, runtimeConf(pod, "v"+v)); err != nil {
			t.Fatalf("DEL %s: %v", v, err)
		}
	}
	if l := n.leases("bridge"); len(l) != 0 {
		t.Errorf("leases left: %v", l)
	}
}

// TestDelIsIdempotent deletes twice, and once more after the pod's
// namespace is gone, and without a namespace at all.
func TestDelIsIdempotent(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.0.0", nil)
	pod := nstest.NewNamed(t)
	rt := runtimeConf(pod, "idem")
	mustAdd(t, n, conf, pod, "idem")
	for i := range 2 {
		if err := n.del(conf, rt); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	// The pod's interface name is free as soon as DEL returns.
	if _, err := veth.Get(pod, "eth0"); !errors.Is(err, veth.ErrNotFound) {
		t.Errorf("eth0 still in the pod after DEL: %v", err)
	}
	if left := n.vethsGone(); len(left) != 0 {
		t.Errorf("veths left: %v", left)
	}
	// A pod whose namespace vanished before DEL.
	gone := nstest.NewNamed(t)
	rtGone := runtimeConf(gone, "gone")
	mustAdd(t, n, conf, gone, "gone")
	if err := netns.DeleteNamed(gone.Name()); err != nil {
		t.Fatal(err)
	}
	if err := n.del(conf, rtGone); err != nil {
		t.Fatalf("DEL with vanished netns: %v", err)
	}
	// netns-less DEL (CNI_NETNS unset) still releases the address.
	other := nstest.New(t)
	mustAdd(t, n, conf, other, "nons")
	if err := n.del(conf, &libcni.RuntimeConf{ContainerID: "nons", IfName: "eth0"}); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	if l := n.leases("bridge"); len(l) != 0 {
		t.Errorf("leases left: %v", l)
	}
}

// TestNothingLeftBehind adds and deletes many pods and checks the node is
// as it was, but for the shared bridge.
func TestNothingLeftBehind(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.0.0", nil)
	const pods = 12
	var rts []*libcni.RuntimeConf
	for i := range pods {
		pod := nstest.New(t)
		rt := runtimeConf(pod, fmt.Sprintf("c%d", i))
		if _, err := n.add(conf, rt); err != nil {
			t.Fatal(err)
		}
		rts = append(rts, rt)
	}
	if got := len(n.leases("bridge")); got != pods {
		t.Fatalf("%d leases for %d pods", got, pods)
	}
	for _, rt := range rts {
		if err := n.del(conf, rt); err != nil {
			t.Fatal(err)
		}
	}
	if l := n.leases("bridge"); len(l) != 0 {
		t.Errorf("leases left: %v", l)
	}
	if left := n.vethsGone(); len(left) != 0 {
		t.Errorf("veths left in node: %v", left)
	}
	if ps := n.ports(); len(ps) != 0 {
		t.Errorf("ports left: %v", ps)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		conf string
		code uint
	}{
		{"not json", `{"cniVersion":"1.0.0",`, types.ErrDecodingFailure},
		{"vlan", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","vlan":100}`, types.ErrInvalidNetworkConfig},
		{"vlanTrunk", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","vlanTrunk":[{"id":5}]}`, types.ErrInvalidNetworkConfig},
		{"macspoofchk", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","macspoofchk":true}`, types.ErrInvalidNetworkConfig},
		{"ipMasqBackend", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","ipMasqBackend":"ebpf"}`, types.ErrInvalidNetworkConfig},
		{"bridge name", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","bridge":"averyveryverylongname"}`, types.ErrInvalidNetworkConfig},
		{"mtu", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","mtu":20}`, types.ErrInvalidNetworkConfig},
		{"hairpin+promisc", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","hairpinMode":true,"promiscMode":true}`, types.ErrInvalidNetworkConfig},
		{"mac", `{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","runtimeConfig":{"mac":"01:00:00:00:00:01"}}`, types.ErrInvalidNetworkConfig},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadConf([]byte(c.conf), "")
			te, ok := err.(*types.Error)
			if !ok || te.Code != c.code {
				t.Fatalf("loadConf = %v, want code %d", err, c.code)
			}
		})
	}
	if n, err := loadConf([]byte(`{"cniVersion":"1.0.0","name":"b","type":"podnet-bridge","vlan":0,"isDefaultGateway":true}`), "IgnoreUnknown=1;MAC=0a:58:0a:c8:00:04"); err != nil || !n.IsGateway || n.mac.String() != "0a:58:0a:c8:00:04" || n.Bridge != "cni0" {
		t.Fatalf("defaults: %+v %v", n, err)
	}
}

// TestBadInputLeavesNothing runs the built plugin with malformed input and
// checks the code it answers and that the node is untouched.
func TestBadInputLeavesNothing(t *testing.T) {
	n := newNode(t)
	pod := nstest.New(t)
	cases := []struct {
		name string
		conf []byte
		rt   *libcni.RuntimeConf
		code uint
	}{
		{"vlan", n.conf("1.0.0", map[string]any{"vlan": 7}), runtimeConf(pod, "bad1"), types.ErrInvalidNetworkConfig},
		{"bad bridge", n.conf("1.0.0", map[string]any{"bridge": "a/b"}), runtimeConf(pod, "bad2"), types.ErrInvalidNetworkConfig},
		{"bad ifname", n.conf("1.0.0", nil), &libcni.RuntimeConf{ContainerID: "bad3", NetNS: pod.Path(), IfName: "eth0/x"}, types.ErrInvalidEnvironmentVariables},
		{"long id", n.conf("1.0.0", nil), runtimeConf(pod, strings.Repeat("a", 300)), types.ErrInvalidNetworkConfig},
		{"no netns", n.conf("1.0.0", nil), &libcni.RuntimeConf{ContainerID: "bad5", NetNS: "/nonexistent/ns", IfName: "eth0"}, types.ErrInvalidEnvironmentVariables},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := n.add(c.conf, c.rt)
			te, ok := err.(*types.Error)
			if !ok || te.Code != c.code {
				t.Fatalf("ADD = %v, want CNI error code %d", err, c.code)
			}
			if _, err := bridge.Get(n.ns, "cnio0"); err == nil {
				t.Error("a bridge was created")
			}
			if l := n.leases("bridge"); len(l) != 0 {
				t.Errorf("leases: %v", l)
			}
			if have, _ := addr.List(pod, "eth0"); have != nil {
				t.Errorf("pod got an eth0")
			}
		})
	}
}

// TestFailureRollsBack makes ADD fail after the veth exists (exhausted
// range) and after the address is allocated (a different gateway already
// on the bridge), and checks each time that nothing of the attempt remains.
func TestFailureRollsBack(t *testing.T) {
	n := newNode(t)
	tiny := n.conf("1.0.0", map[string]any{"ipam": map[string]any{
		"type":    "host-local",
		"ranges":  []any{[]any{map[string]any{"subnet": "10.200.0.0/30"}}}, // one usable address
		"dataDir": n.dataDir,
	}})
	first := nstest.New(t)
	mustAdd(t, n, tiny, first, "first")
	second := nstest.New(t)
	if _, err := n.add(tiny, runtimeConf(second, "second")); err == nil {
		t.Fatal("ADD into a full range succeeded")
	}
	if ps := n.ports(); len(ps) != 1 {
		t.Errorf("after exhausted ADD, ports %v (want only the first pod's)", ps)
	}
	if _, err := veth.Get(second, "eth0"); err == nil {
		t.Error("the failed pod kept its eth0")
	}

	// Another gateway in the same subnet: ADD fails once IPAM has run.
	other := n.conf("1.0.0", map[string]any{"name": "other", "ipam": map[string]any{
		"type":    "host-local",
		"ranges":  []any{[]any{map[string]any{"subnet": "10.200.0.0/24", "gateway": "10.200.0.254"}}},
		"dataDir": n.dataDir,
	}})
	third := nstest.New(t)
	_, err := n.add(other, runtimeConf(third, "third"))
	if err == nil || !strings.Contains(err.Error(), "10.200.0.1/30") {
		t.Fatalf("ADD with a clashing gateway: %v", err)
	}
	if l := n.leases("other"); len(l) != 0 {
		t.Errorf("the failed ADD kept its lease: %v", l)
	}
	if ps := n.ports(); len(ps) != 1 {
		t.Errorf("after the failed ADD, ports %v", ps)
	}
	// With forceAddress the gateway moves.
	forced := n.conf("1.0.0", map[string]any{"name": "other", "forceAddress": true, "ipam": map[string]any{
		"type":    "host-local",
		"ranges":  []any{[]any{map[string]any{"subnet": "10.200.0.0/24", "gateway": "10.200.0.254"}}},
		"dataDir": n.dataDir,
	}})
	mustAdd(t, n, forced, third, "third")
	brAddrs, _ := bridge.Addrs(n.ns, "cnio0")
	if !slices.Contains(brAddrs, netip.MustParsePrefix("10.200.0.254/24")) || slices.Contains(brAddrs, netip.MustParsePrefix("10.200.0.1/30")) {
		t.Errorf("forceAddress: bridge has %v", brAddrs)
	}
}

// TestIPv6LinkLocalOnlyWhenWanted: on an IPv4-only network the pod's eth0
// gets no IPv6 link-local address (so no DAD, MLD or router solicitations
// flooded to every port of the bridge), and no bridge port gets one; a
// dual-stack pod keeps its own and talks IPv6 across the bridge.
func TestIPv6LinkLocalOnlyWhenWanted(t *testing.T) {
	n := newNode(t)
	v4 := nstest.New(t)
	v4res := mustAdd(t, n, n.conf("1.0.0", nil), v4, "v4")
	if as, _ := addr.List(v4, "eth0"); slices.ContainsFunc(as, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		t.Errorf("IPv4-only network: eth0 has IPv6 addresses %v", as)
	}
	// The address would come with the carrier, later: what prevents it is
	// the interface's address generation mode.
	if mode, err := sysctl.Get(v4, "net/ipv6/conf/eth0/addr_gen_mode"); err != nil || mode != "1" {
		t.Errorf("IPv4-only network: eth0 addr_gen_mode = %q, %v; want 1 (none)", mode, err)
	}
	// The host side is a bridge port: no link-local address of its own,
	// whatever the network's families.
	hostMode := func(r *current.Result) string {
		mode, err := sysctl.Get(n.ns, "net/ipv6/conf/"+r.Interfaces[1].Name+"/addr_gen_mode")
		if err != nil {
			t.Fatal(err)
		}
		return mode
	}
	if m := hostMode(v4res); m != "1" {
		t.Errorf("IPv4-only network: host end addr_gen_mode = %q, want 1 (none)", m)
	}
	dual := n.conf("1.0.0", map[string]any{"name": "dual", "ipam": map[string]any{
		"type": "host-local",
		"ranges": []any{
			[]any{map[string]any{"subnet": "10.201.0.0/24"}},
			[]any{map[string]any{"subnet": "fd00:201::/64"}},
		},
		"dataDir": n.dataDir,
	}})
	pod := nstest.New(t)
	res := mustAdd(t, n, dual, pod, "dual")
	if len(res.IPs) != 2 {
		t.Fatalf("dual-stack result: %+v", res.IPs)
	}
	as, _ := addr.List(pod, "eth0")
	for _, want := range res.IPs {
		if !slices.Contains(as, nl.Prefix(&want.Address)) {
			t.Errorf("eth0 addresses %v lack %v", as, want.Address)
		}
	}
	if mode, err := sysctl.Get(pod, "net/ipv6/conf/eth0/addr_gen_mode"); err != nil || mode != "0" {
		t.Errorf("dual-stack network: eth0 addr_gen_mode = %q, %v; want 0 (eui64)", mode, err)
	}
	if m := hostMode(res); m != "1" {
		t.Errorf("dual-stack network: host end addr_gen_mode = %q, want 1 (none)", m)
	}
	if _, err := probe.Ping(pod, netip.MustParseAddr("10.201.0.1"), 3*time.Second); err != nil {
		t.Errorf("dual-stack pod → its IPv4 gateway: %v", err)
	}
	// IPv6 between two pods crosses the bridge, whose ports have no
	// IPv6 address of their own.
	peer := nstest.New(t)
	peerRes := mustAdd(t, n, dual, peer, "dual2")
	var v6 netip.Addr
	for _, ipc := range peerRes.IPs {
		if a := nl.Addr(ipc.Address.IP); a.Is6() {
			v6 = a
		}
	}
	srv, err := probe.Serve(peer, netip.AddrPortFrom(v6, 8080), "dual2")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if r, err := probe.Ask(pod, "tcp", netip.AddrPortFrom(v6, 8080), 3*time.Second); err != nil || r.Name != "dual2" {
		t.Errorf("dual-stack pod → other pod over IPv6: %+v, %v", r, err)
	}
}
