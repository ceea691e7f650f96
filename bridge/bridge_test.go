package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/veth"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func kernelLink(t *testing.T, ns *netns.NS, name string) netlink.Link {
	t.Helper()
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func TestEnsure(t *testing.T) {
	ns := nstest.New(t)
	b, err := bridge.Ensure(ns, bridge.Spec{Name: "cnio0", MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	l := kernelLink(t, ns, "cnio0")
	if l.Type() != "bridge" || l.Attrs().MTU != 1400 || l.Attrs().Index != b.Index || !b.Up {
		t.Fatalf("kernel has %s mtu %d index %d; Ensure returned %+v", l.Type(), l.Attrs().MTU, l.Attrs().Index, b)
	}
	// Converge: new MTU and promisc, same link.
	b2, err := bridge.Ensure(ns, bridge.Spec{Name: "cnio0", MTU: 1300, Promisc: true})
	if err != nil {
		t.Fatal(err)
	}
	l = kernelLink(t, ns, "cnio0")
	if b2.Index != b.Index || l.Attrs().MTU != 1300 || l.Attrs().Promisc == 0 {
		t.Fatalf("converge: index %d→%d, kernel mtu %d promisc %d", b.Index, b2.Index, l.Attrs().MTU, l.Attrs().Promisc)
	}
	if err := bridge.SetPromisc(ns, "cnio0", false); err != nil {
		t.Fatal(err)
	}
	if kernelLink(t, ns, "cnio0").Attrs().Promisc != 0 {
		t.Fatal("promisc still on")
	}
	if err := bridge.Delete(ns, "cnio0"); err != nil {
		t.Fatal(err)
	}
	if _, err := bridge.Get(ns, "cnio0"); !errors.Is(err, bridge.ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if err := bridge.Delete(ns, "cnio0"); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

func TestEnsureConflict(t *testing.T) {
	ns := nstest.New(t)
	if _, err := veth.Create(ns, veth.Spec{Name: "cnio0", PeerName: "eth0", PeerNS: nstest.New(t)}); err != nil {
		t.Fatal(err)
	}
	_, err := bridge.Ensure(ns, bridge.Spec{Name: "cnio0", MTU: 1400})
	if !errors.Is(err, bridge.ErrConflict) {
		t.Fatalf("Ensure over a veth: %v, want ErrConflict", err)
	}
	if !strings.Contains(err.Error(), `bridge "cnio0"`) || !strings.Contains(err.Error(), ns.Path()) {
		t.Errorf("error %q should name the bridge and the namespace", err)
	}
	if l := kernelLink(t, ns, "cnio0"); l.Type() != "veth" || l.Attrs().MTU != 1500 {
		t.Errorf("conflicting link was changed: %s mtu %d", l.Type(), l.Attrs().MTU)
	}
	if err := bridge.Delete(ns, "cnio0"); !errors.Is(err, bridge.ErrConflict) {
		t.Errorf("Delete of a veth: %v, want ErrConflict", err)
	}
}

func TestEnsureAddr(t *testing.T) {
	ns := nstest.New(t)
	if _, err := bridge.Ensure(ns, bridge.Spec{Name: "cnio0"}); err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParsePrefix("10.200.0.1/24")
	for range 2 { // idempotent
		if err := bridge.EnsureAddr(ns, "cnio0", gw, bridge.AddrOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	v6 := netip.MustParsePrefix("fd00:200::1/64")
	other := netip.MustParsePrefix("10.201.0.1/24")
	for _, p := range []netip.Prefix{v6, other} {
		if err := bridge.EnsureAddr(ns, "cnio0", p, bridge.AddrOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	moved := netip.MustParsePrefix("10.200.0.254/24")
	err := bridge.EnsureAddr(ns, "cnio0", moved, bridge.AddrOptions{})
	if !errors.Is(err, bridge.ErrConflict) || !strings.Contains(err.Error(), "10.200.0.1/24") {
		t.Fatalf("different gateway in the same subnet: %v, want ErrConflict naming 10.200.0.1/24", err)
	}
	if err := bridge.EnsureAddr(ns, "cnio0", moved, bridge.AddrOptions{Replace: true}); err != nil {
		t.Fatal(err)
	}
	addrs, err := bridge.Addrs(ns, "cnio0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []netip.Prefix{moved, v6, other} {
		if !slices.Contains(addrs, want) {
			t.Errorf("addresses %v lack %v", addrs, want)
		}
	}
	if slices.Contains(addrs, gw) {
		t.Errorf("replaced address %v still present: %v", gw, addrs)
	}
	if err := bridge.EnsureAddr(ns, "cnio0", netip.Prefix{}, bridge.AddrOptions{}); !errors.Is(err, bridge.ErrInvalid) {
		t.Errorf("zero prefix: %v, want ErrInvalid", err)
	}
	if err := bridge.EnsureAddr(ns, "nosuch", gw, bridge.AddrOptions{}); !errors.Is(err, bridge.ErrNotFound) {
		t.Errorf("missing bridge: %v, want ErrNotFound", err)
	}
}

// TestPodsOnBridge builds the classic node picture: two pods on cnio0 with a
// gateway address, and checks ports, hairpin and real traffic.
func TestPodsOnBridge(t *testing.T) {
	node := nstest.New(t)
	if _, err := bridge.Ensure(node, bridge.Spec{Name: "cnio0"}); err != nil {
		t.Fatal(err)
	}
	if err := bridge.EnsureAddr(node, "cnio0", netip.MustParsePrefix("10.200.0.1/24"), bridge.AddrOptions{}); err != nil {
		t.Fatal(err)
	}
	pods, hostEnds := attachPods(t, node, "cnio0", "10.200.0.2/24", "10.200.0.3/24")
	// Attaching again is a no-op that converges hairpin.
	if err := bridge.Attach(node, "cnio0", hostEnds[1], bridge.PortOptions{Hairpin: false}); err != nil {
		t.Fatal(err)
	}
	ports, err := bridge.Ports(node, "cnio0")
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 2 || ports[0].Name != hostEnds[0] || ports[1].Name != hostEnds[1] ||
		!ports[0].Hairpin || ports[1].Hairpin {
		t.Fatalf("Ports = %+v, want %v with hairpin on the first only", ports, hostEnds)
	}
	checkBridgeLinkShows(t, node, hostEnds)
	checkHairpinToggles(t, node, hostEnds[0])

	for _, dst := range []string{"10.200.0.3", "10.200.0.1"} {
		if _, err := probe.Ping(pods[0], netip.MustParseAddr(dst), 3*time.Second); err != nil {
			t.Errorf("pod 0 → %s: %v", dst, err)
		}
	}
	checkDetachedUnreachable(t, node, pods[0], hostEnds[1])
}

// attachPods makes a pod namespace per address, with eth0 holding it, and
// attaches the host end of each veth to br, the first with hairpin on. It
// returns the pods and the host ends.
func attachPods(t *testing.T, node *netns.NS, br string, addrs ...string) (pods []*netns.NS, hostEnds []string) {
	t.Helper()
	for i, addr := range addrs {
		pod := nstest.New(t)
		p, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: pod})
		if err != nil {
			t.Fatal(err)
		}
		if err := bridge.Attach(node, br, p.Name, bridge.PortOptions{Hairpin: i == 0}); err != nil {
			t.Fatal(err)
		}
		h, err := nl.Handle(pod)
		if err != nil {
			t.Fatal(err)
		}
		eth0, _ := h.LinkByName("eth0")
		if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: nl.IPNet(netip.MustParsePrefix(addr))}); err != nil {
			t.Fatal(err)
		}
		h.Close()
		pods = append(pods, pod)
		hostEnds = append(hostEnds, p.Name)
	}
	return pods, hostEnds
}

// checkBridgeLinkShows checks that iproute2 agrees on membership and
// hairpin: bridge link shows every port on cnio0, one with hairpin on.
func checkBridgeLinkShows(t *testing.T, node *netns.NS, ports []string) {
	t.Helper()
	var out []byte
	var err error
	node.Do(func() error {
		out, err = exec.Command("bridge", "-d", "link", "show").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("bridge link: %v: %s", err, out)
	}
	for _, name := range ports {
		if !strings.Contains(string(out), name) || !strings.Contains(string(out), "master cnio0") {
			t.Errorf("bridge link does not show %s on cnio0:\n%s", name, out)
		}
	}
	if !strings.Contains(string(out), "hairpin on") {
		t.Errorf("bridge link shows no hairpin port:\n%s", out)
	}
}

// checkHairpinToggles attaches the first port of cnio0, port, again: that
// turns hairpin mode off, and on.
func checkHairpinToggles(t *testing.T, node *netns.NS, port string) {
	t.Helper()
	for _, on := range []bool{false, true} {
		if err := bridge.Attach(node, "cnio0", port, bridge.PortOptions{Hairpin: on}); err != nil {
			t.Fatal(err)
		}
		if ports, err := bridge.Ports(node, "cnio0"); err != nil || ports[0].Hairpin != on {
			t.Fatalf("after Attach with hairpin %v: Ports = %+v, %v", on, ports, err)
		}
	}
}

// checkDetachedUnreachable detaches port (twice: the second is a no-op),
// after which from no longer reaches 10.200.0.3 behind it.
func checkDetachedUnreachable(t *testing.T, node, from *netns.NS, port string) {
	t.Helper()
	if err := bridge.Detach(node, port); err != nil {
		t.Fatal(err)
	}
	if err := bridge.Detach(node, port); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if ports, _ := bridge.Ports(node, "cnio0"); len(ports) != 1 {
		t.Fatalf("after Detach: %+v", ports)
	}
	if _, err := probe.Ping(from, netip.MustParseAddr("10.200.0.3"), 300*time.Millisecond); err == nil {
		t.Error("detached pod still answers")
	}
}

func TestBadInput(t *testing.T) {
	ns := nstest.New(t)
	for _, spec := range []bridge.Spec{{}, {Name: "averyveryverylongname"}, {Name: "a b"}, {Name: "br0", MTU: 1 << 20}} {
		if _, err := bridge.Ensure(ns, spec); !errors.Is(err, bridge.ErrInvalid) {
			t.Errorf("Ensure(%+v) = %v, want ErrInvalid", spec, err)
		}
	}
	if _, err := bridge.Ensure(ns, bridge.Spec{Name: "br0"}); err != nil {
		t.Fatal(err)
	}
	if err := bridge.Attach(ns, "br0", "nosuch", bridge.PortOptions{}); !errors.Is(err, bridge.ErrNotFound) {
		t.Errorf("Attach(nosuch) = %v, want ErrNotFound", err)
	}
	if err := bridge.Attach(ns, "lo", "br0", bridge.PortOptions{}); !errors.Is(err, bridge.ErrConflict) {
		t.Errorf("Attach to lo = %v, want ErrConflict", err)
	}
}

// TestAddrsOfTheBridgeOnly gives other links of the namespace addresses in
// the bridge's subnets, and a point-to-point address to the bridge: only the
// bridge's own addresses count, and only they are replaced.
func TestAddrsOfTheBridgeOnly(t *testing.T) {
	ns := nstest.New(t)
	if _, err := bridge.Ensure(ns, bridge.Spec{Name: "cnio0"}); err != nil {
		t.Fatal(err)
	}
	// The kernel gives a bridge that comes up an IPv6 link-local address of
	// its own (fe80::/64 from the MAC); the comparisons below leave those out.
	linkLocal := netip.MustParsePrefix("fe80::1/64")
	own := func(as []netip.Prefix) []netip.Prefix {
		return slices.DeleteFunc(slices.Clone(as), func(p netip.Prefix) bool {
			return p.Addr().IsLinkLocalUnicast() && p != linkLocal
		})
	}
	if addrs, err := bridge.Addrs(ns, "cnio0"); err != nil || addrs == nil || len(own(addrs)) != 0 {
		t.Fatalf("new bridge: %v, %v; want no address but the kernel's link-local", addrs, err)
	}
	if _, err := bridge.Ensure(ns, bridge.Spec{Name: "other0"}); err != nil {
		t.Fatal(err)
	}
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	add := func(link string, a *netlink.Addr) {
		t.Helper()
		if err := h.AddrAdd(kernelLink(t, ns, link), a); err != nil {
			t.Fatalf("add %v to %s: %v", a, link, err)
		}
	}
	gw := netip.MustParsePrefix("10.200.0.1/24")
	elsewhere := []netip.Prefix{gw, netip.MustParsePrefix("10.210.0.9/24"), netip.MustParsePrefix("fd00:200::1/64")}
	for _, p := range elsewhere {
		add("other0", &netlink.Addr{IPNet: nl.IPNet(p)})
	}
	// ip addr add 10.210.0.1 peer 10.210.0.2/24 dev cnio0
	add("cnio0", &netlink.Addr{IPNet: nl.IPNet(netip.MustParsePrefix("10.210.0.1/32")), Peer: nl.IPNet(netip.MustParsePrefix("10.210.0.2/24"))})
	add("cnio0", &netlink.Addr{IPNet: nl.IPNet(linkLocal)})

	// The same address on another link is no reason to skip, nor a conflict.
	if err := bridge.EnsureAddr(ns, "cnio0", gw, bridge.AddrOptions{}); err != nil {
		t.Fatal(err)
	}
	v6 := netip.MustParsePrefix("fd00:200::2/64")
	if err := bridge.EnsureAddr(ns, "cnio0", v6, bridge.AddrOptions{}); err != nil {
		t.Fatalf("link-local or other links' addresses conflict: %v", err)
	}
	moved := netip.MustParsePrefix("10.210.0.5/24")
	err = bridge.EnsureAddr(ns, "cnio0", moved, bridge.AddrOptions{})
	if !errors.Is(err, bridge.ErrConflict) || !strings.Contains(err.Error(), "10.210.0.1/32") {
		t.Fatalf("over the point-to-point address: %v, want ErrConflict naming 10.210.0.1/32", err)
	}
	if err := bridge.EnsureAddr(ns, "cnio0", moved, bridge.AddrOptions{Replace: true}); err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{gw, moved, v6, linkLocal}
	got, err := bridge.Addrs(ns, "cnio0")
	if err != nil {
		t.Fatal(err)
	}
	if !sameSet(own(got), want) {
		t.Errorf("Addrs = %v, want %v", got, want)
	}
	// The kernel agrees, and the other bridge kept all its addresses.
	for link, want := range map[string][]netip.Prefix{"cnio0": want, "other0": elsewhere} {
		as, err := h.AddrList(kernelLink(t, ns, link), netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		var have []netip.Prefix
		for _, a := range as {
			have = append(have, nl.Prefix(a.IPNet))
		}
		if !sameSet(own(have), want) {
			t.Errorf("kernel: %s has %v, want %v", link, have, want)
		}
	}
}

func sameSet(a, b []netip.Prefix) bool {
	less := func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) }
	return slices.Equal(slices.SortedFunc(slices.Values(a), less), slices.SortedFunc(slices.Values(b), less))
}

// BenchmarkEnsureAddr measures the call every CNI ADD makes, EnsureAddr of
// the gateway that is already there, on a node with 1 or 500 pods: veth
// ports of the bridge whose peers sit in one other namespace, each host end
// with an address of its own so that every link has one to dump. It runs
// from a thread in the node's namespace, as a CNI plugin does.
func BenchmarkEnsureAddr(b *testing.B) {
	for _, pods := range []int{1, 500} {
		b.Run(fmt.Sprintf("ports=%d", pods), func(b *testing.B) {
			node, podNS := nstest.New(b), nstest.New(b)
			if _, err := bridge.Ensure(node, bridge.Spec{Name: "cnio0"}); err != nil {
				b.Fatal(err)
			}
			gw := netip.MustParsePrefix("10.200.0.1/16")
			if err := bridge.EnsureAddr(node, "cnio0", gw, bridge.AddrOptions{}); err != nil {
				b.Fatal(err)
			}
			h, err := nl.Handle(node)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			for i := range pods {
				la := netlink.NewLinkAttrs()
				la.Name = fmt.Sprintf("veth%d", i)
				v := &netlink.Veth{LinkAttrs: la, PeerName: fmt.Sprintf("eth%d", i), PeerNamespace: netlink.NsFd(podNS.Fd())}
				if err := h.LinkAdd(v); err != nil {
					b.Fatal(err)
				}
				if err := bridge.Attach(node, "cnio0", la.Name, bridge.PortOptions{}); err != nil {
					b.Fatal(err)
				}
				l, err := h.LinkByName(la.Name)
				if err != nil {
					b.Fatal(err)
				}
				a := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 201, byte(i >> 8), byte(i)}), 32)
				if err := h.AddrAdd(l, &netlink.Addr{IPNet: nl.IPNet(a)}); err != nil {
					b.Fatal(err)
				}
			}
			err = node.Do(func() error {
				for b.Loop() {
					if err := bridge.EnsureAddr(node, "cnio0", gw, bridge.AddrOptions{}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestWaitForwarding: a port that joined its bridge while down forwards
// once the kernel has seen its carrier, and WaitForwarding sees it, as
// iproute2 does; a port without carrier times out; a link that is no port,
// and a missing one, are errors of their kind.
func TestWaitForwarding(t *testing.T) {
	node, pod := nstest.New(t), nstest.New(t)
	br, err := bridge.Ensure(node, bridge.Spec{Name: "cnio0"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: pod, MasterIndex: br.Index})
	if err != nil {
		t.Fatal(err)
	}
	if err := bridge.WaitForwarding(timeout(t, 5*time.Second), node, p.Name); err != nil {
		t.Fatal(err)
	}
	var out []byte
	node.Do(func() error {
		out, err = exec.Command("bridge", "-d", "link", "show", "dev", p.Name).CombinedOutput()
		return err
	})
	if err != nil || !strings.Contains(string(out), "state forwarding") || !strings.Contains(string(out), "master cnio0") {
		t.Errorf("bridge link show: %v\n%s", err, out)
	}

	// Without a carrier (the pod's end down) the port stops forwarding.
	h, l, err := nl.Link(pod, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	err = h.LinkSetDown(l)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		state, _, err := nl.PortState(node, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		if state == nl.PortDisabled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("port state %d 5 s after its peer went down", state)
		}
		time.Sleep(time.Millisecond)
	}
	if err := bridge.WaitForwarding(timeout(t, 20*time.Millisecond), node, p.Name); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForwarding on a port without carrier: %v, want the context's deadline", err)
	}

	lone, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: nstest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := bridge.WaitForwarding(timeout(t, time.Second), node, lone.Name); !errors.Is(err, bridge.ErrConflict) {
		t.Errorf("WaitForwarding on a link that is no port: %v, want ErrConflict", err)
	}
	if err := bridge.WaitForwarding(timeout(t, time.Second), node, "nosuch0"); !errors.Is(err, bridge.ErrNotFound) {
		t.Errorf("WaitForwarding on a missing link: %v, want ErrNotFound", err)
	}
}

// timeout returns a context that ends after d or with the test.
func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
