package veth_test

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/veth"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func links(t *testing.T, ns *netns.NS) map[string]netlink.Link {
	t.Helper()
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]netlink.Link{}
	for _, l := range ls {
		m[l.Attrs().Name] = l
	}
	return m
}

func TestCreate(t *testing.T) {
	node, pod := nstest.New(t), nstest.New(t)
	mac, _ := net.ParseMAC("0a:58:0a:c8:00:04")
	p, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: pod, MTU: 1400, PeerMAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^veth[0-9a-f]{8}$`).MatchString(p.Name) {
		t.Errorf("generated name %q, want veth + 8 hex digits", p.Name)
	}
	host, ok := links(t, node)[p.Name]
	if !ok {
		t.Fatalf("%s not in node namespace", p.Name)
	}
	peer, ok := links(t, pod)["eth0"]
	if !ok {
		t.Fatal("eth0 not in pod namespace")
	}
	if _, clash := links(t, node)["eth0"]; clash {
		t.Error("peer also visible in the node namespace")
	}
	for _, l := range []netlink.Link{host, peer} {
		a := l.Attrs()
		if l.Type() != "veth" || a.MTU != 1400 || a.Flags&net.FlagUp == 0 {
			t.Errorf("%s: type %s mtu %d flags %v, want veth 1400 up", a.Name, l.Type(), a.MTU, a.Flags)
		}
	}
	if peer.Attrs().HardwareAddr.String() != mac.String() {
		t.Errorf("peer MAC %s, want %s", peer.Attrs().HardwareAddr, mac)
	}
	if p.PeerIndex != peer.Attrs().Index || p.Index != host.Attrs().Index {
		t.Errorf("Pair indexes %d/%d, kernel %d/%d", p.Index, p.PeerIndex, host.Attrs().Index, peer.Attrs().Index)
	}

	// The walk by hand: ethtool -S eth0 in the pod names the host end.
	var out []byte
	err = pod.Do(func() error {
		out, err = exec.Command("ethtool", "-S", "eth0").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("ethtool: %v: %s", err, out)
	}
	if want := fmt.Sprintf("peer_ifindex: %d", p.Index); !strings.Contains(string(out), want) {
		t.Errorf("ethtool -S eth0 = %q, want %q", out, want)
	}
	end, err := veth.Get(pod, "eth0")
	if err != nil || end.PeerIndex != p.Index {
		t.Fatalf("Get(eth0) = %+v, %v; want PeerIndex %d", end, err, p.Index)
	}
	hostEnd, err := veth.Peer(pod, "eth0", node)
	if err != nil {
		t.Fatal(err)
	}
	if hostEnd.Name != p.Name || hostEnd.Index != p.Index || hostEnd.PeerIndex != p.PeerIndex {
		t.Errorf("Peer = %+v, want %s/%d", hostEnd, p.Name, p.Index)
	}
	// Asking in the wrong namespace does not invent a peer.
	if _, err := veth.Peer(pod, "eth0", nstest.New(t)); !errors.Is(err, veth.ErrNotFound) {
		t.Errorf("Peer in unrelated namespace: %v, want ErrNotFound", err)
	}

	if err := veth.Delete(node, p.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t, pod)["eth0"]; ok {
		t.Error("peer survived Delete")
	}
	if err := veth.Delete(node, p.Name); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func TestCreateNamedExists(t *testing.T) {
	node, pod := nstest.New(t), nstest.New(t)
	if _, err := veth.Create(node, veth.Spec{Name: "vethA", PeerName: "eth0", PeerNS: pod}); err != nil {
		t.Fatal(err)
	}
	other := nstest.New(t)
	// Host-side name taken.
	_, err := veth.Create(node, veth.Spec{Name: "vethA", PeerName: "eth0", PeerNS: other})
	if !errors.Is(err, veth.ErrExist) {
		t.Fatalf("host name taken: %v, want ErrExist", err)
	}
	if _, ok := links(t, other)["eth0"]; ok {
		t.Error("failed create left a peer behind")
	}
	// Peer name taken inside the pod.
	_, err = veth.Create(node, veth.Spec{Name: "vethB", PeerName: "eth0", PeerNS: pod})
	if !errors.Is(err, veth.ErrExist) {
		t.Fatalf("peer name taken: %v, want ErrExist", err)
	}
	if _, ok := links(t, node)["vethB"]; ok {
		t.Error("failed create left the host end behind")
	}
	if !strings.Contains(err.Error(), "eth0") {
		t.Errorf("error %q does not name the clashing peer", err)
	}
}

func TestBadInput(t *testing.T) {
	node, pod := nstest.New(t), nstest.New(t)
	before := len(links(t, node))
	cases := []struct {
		name string
		spec veth.Spec
	}{
		{"empty peer name", veth.Spec{PeerNS: pod}},
		{"long name", veth.Spec{Name: "veth0123456789ab", PeerName: "eth0", PeerNS: pod}},
		{"slash", veth.Spec{Name: "a/b", PeerName: "eth0", PeerNS: pod}},
		{"space in peer", veth.Spec{PeerName: "eth 0", PeerNS: pod}},
		{"nil peer ns", veth.Spec{PeerName: "eth0"}},
		{"tiny mtu", veth.Spec{PeerName: "eth0", PeerNS: pod, MTU: 10}},
		{"multicast mac", veth.Spec{PeerName: "eth0", PeerNS: pod, MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := veth.Create(node, c.spec)
			if !errors.Is(err, veth.ErrInvalid) {
				t.Fatalf("Create = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), node.String()) {
				t.Errorf("error %q does not name the namespace", err)
			}
		})
	}
	if after := len(links(t, node)); after != before {
		t.Errorf("bad input changed the link count %d → %d", before, after)
	}
	if err := veth.Delete(node, "lo"); !errors.Is(err, veth.ErrConflict) {
		t.Errorf("Delete(lo) = %v, want ErrConflict", err)
	}
	if _, err := veth.Get(node, "nosuch"); !errors.Is(err, veth.ErrNotFound) {
		t.Errorf("Get(nosuch) = %v, want ErrNotFound", err)
	}
}

// TestAddrGenModeNone: with the options, both ends come up without an
// IPv6 link-local address; without them, the kernel gives each one.
func TestAddrGenModeNone(t *testing.T) {
	node := nstest.New(t)
	quiet, chatty := nstest.New(t), nstest.New(t)
	q, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: quiet, AddrGenModeNone: true, PeerAddrGenModeNone: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: chatty})
	if err != nil {
		t.Fatal(err)
	}
	type end struct {
		ns   *netns.NS
		name string
	}
	quietEnds := []end{{node, q.Name}, {quiet, "eth0"}}
	chattyEnds := []end{{node, c.Name}, {chatty, "eth0"}}
	state := func(e end) (up bool, v6 []netlink.Addr) {
		h, l, err := nl.Link(e.ns, e.name)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		as, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().OperState == netlink.OperUp, as
	}
	// The kernel adds a link-local address when the carrier comes up; once
	// every end is operationally up and the control ends have theirs, the
	// others would have had one too.
	ready := func() bool {
		for _, e := range append(quietEnds, chattyEnds...) {
			if up, _ := state(e); !up {
				return false
			}
		}
		for _, e := range chattyEnds {
			if _, as := state(e); len(as) == 0 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(5 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatal("ends not up, or the control ends without a link-local address, within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, e := range quietEnds {
		if _, as := state(e); len(as) != 0 {
			t.Errorf("%s with addrgenmode none has IPv6 addresses %v", e.name, as)
		}
		mode, err := sysctl.Get(e.ns, "net/ipv6/conf/"+e.name+"/addr_gen_mode")
		if err != nil || mode != "1" {
			t.Errorf("%s: addr_gen_mode = %q, %v; want 1 (none)", e.name, mode, err)
		}
	}
}

// TestCreateWithMaster: the host end joins the given master before it
// comes up; a master that does not exist fails the call and leaves no link
// in either namespace.
func TestCreateWithMaster(t *testing.T) {
	node, pod := nstest.New(t), nstest.New(t)
	h, err := nl.Handle(node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	brLink, err := h.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := veth.Create(node, veth.Spec{Name: "vhost0", PeerName: "eth0", PeerNS: pod, MasterIndex: brLink.Attrs().Index})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := veth.Get(node, p.Name); err != nil || l.Master != brLink.Attrs().Index || !l.Up {
		t.Errorf("host end: %+v, %v; want up with master %d", l, err, brLink.Attrs().Index)
	}

	other := nstest.New(t)
	_, err = veth.Create(node, veth.Spec{Name: "vhost1", PeerName: "eth0", PeerNS: other, MasterIndex: 99999})
	if err == nil {
		t.Fatal("Create with a missing master succeeded")
	}
	if _, ok := links(t, node)["vhost1"]; ok {
		t.Error("host end left behind after a failed Create")
	}
	if _, ok := links(t, other)["eth0"]; ok {
		t.Error("peer left behind after a failed Create")
	}
	if _, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: other, MasterIndex: -1}); !errors.Is(err, veth.ErrInvalid) {
		t.Errorf("negative master index: %v, want ErrInvalid", err)
	}
}
