package cni_test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/cni"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func ipnet(s string) net.IPNet { return cni.IPNet(netip.MustParsePrefix(s)) }

// podWithEth0 returns a pod namespace whose eth0 is a veth to a node.
func podWithEth0(t *testing.T) *netns.NS {
	t.Helper()
	node, pod := nstest.New(t), nstest.New(t)
	if _, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: pod}); err != nil {
		t.Fatal(err)
	}
	return pod
}

// TestConfigureIface applies a dual-stack result with a default route and
// a route without a gateway, reads the kernel back, checks it with
// CheckIface, and sees CheckIface notice a missing address.
func TestConfigureIface(t *testing.T) {
	pod := podWithEth0(t)
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		IPs: []*current.IPConfig{
			{Address: ipnet("10.200.0.4/24"), Gateway: cni.IP(netip.MustParseAddr("10.200.0.1"))},
			{Address: ipnet("fd00:200::4/64"), Gateway: cni.IP(netip.MustParseAddr("fd00:200::1"))},
		},
		Routes: []*types.Route{
			{Dst: ipnet("0.0.0.0/0"), GW: cni.IP(netip.MustParseAddr("10.200.0.1"))},
			{Dst: ipnet("10.96.0.0/12")}, // through the IPv4 gateway
			{Dst: ipnet("::/0")},
		},
	}
	for range 2 { // a repeated call converges
		if err := cni.ConfigureIface(pod, "eth0", r); err != nil {
			t.Fatal(err)
		}
	}
	have, err := addr.List(pod, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.200.0.4/24", "fd00:200::4/64"} {
		if !slices.Contains(have, netip.MustParsePrefix(want)) {
			t.Errorf("eth0 lacks %s: %v", want, have)
		}
	}
	routes, err := route.List(pod, route.Filter{Dev: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []route.Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.200.0.1")},
		{Dst: netip.MustParsePrefix("10.96.0.0/12"), Gateway: netip.MustParseAddr("10.200.0.1")},
		{Dst: netip.MustParsePrefix("::/0"), Gateway: netip.MustParseAddr("fd00:200::1")},
	} {
		if !slices.ContainsFunc(routes, func(rt route.Route) bool { return rt.Dst == want.Dst && rt.Gateway == want.Gateway }) {
			t.Errorf("no route %s via %s in %v", want.Dst, want.Gateway, routes)
		}
	}
	if err := cni.CheckIface(pod, "eth0", r); err != nil {
		t.Fatalf("CheckIface after ConfigureIface: %v", err)
	}
	if err := addr.Delete(pod, "eth0", netip.MustParsePrefix("fd00:200::4/64")); err != nil {
		t.Fatal(err)
	}
	if err := cni.CheckIface(pod, "eth0", r); !errors.Is(err, cni.ErrNotFound) {
		t.Errorf("CheckIface without an address: %v, want ErrNotFound", err)
	}
}

// TestConfigureIfaceBadInput: an invalid route is refused before any
// address is added.
func TestConfigureIfaceBadInput(t *testing.T) {
	pod := podWithEth0(t)
	r := &current.Result{
		IPs:    []*current.IPConfig{{Address: ipnet("10.200.0.4/24")}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4(10, 0, 0, 0)}}},
	}
	if err := cni.ConfigureIface(pod, "eth0", r); !errors.Is(err, cni.ErrInvalid) {
		t.Fatalf("ConfigureIface with a route without mask: %v, want ErrInvalid", err)
	}
	if err := cni.ConfigureIface(pod, "eth0", nil); !errors.Is(err, cni.ErrInvalid) {
		t.Errorf("ConfigureIface(nil): %v, want ErrInvalid", err)
	}
	if have, _ := addr.List(pod, "eth0"); slices.Contains(have, netip.MustParsePrefix("10.200.0.4/24")) {
		t.Errorf("a refused result left an address: %v", have)
	}
}
