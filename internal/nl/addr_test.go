package nl_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

// addVeth creates a veth pair named name/peer in ns (peerNS nil) or with
// its peer in peerNS, and returns the link name.
func addVeth(tb testing.TB, h *netlink.Handle, name, peer string, peerNS *netns.NS) netlink.Link {
	tb.Helper()
	la := netlink.NewLinkAttrs()
	la.Name = name
	v := &netlink.Veth{LinkAttrs: la, PeerName: peer}
	if peerNS != nil {
		v.PeerNamespace = netlink.NsFd(peerNS.Fd())
	}
	if err := h.LinkAdd(v); err != nil {
		tb.Fatalf("add veth %s: %v", name, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

func addAddr(tb testing.TB, h *netlink.Handle, l netlink.Link, a nl.LinkAddr) {
	tb.Helper()
	na := &netlink.Addr{IPNet: nl.IPNet(a.Prefix), Peer: nl.IPNet(a.Peer)}
	if err := h.AddrAdd(l, na); err != nil {
		tb.Fatalf("add %v to %s: %v", a, l.Attrs().Name, err)
	}
}

func la(prefix string) nl.LinkAddr { return nl.LinkAddr{Prefix: netip.MustParsePrefix(prefix)} }

func ptp(local, peer string) nl.LinkAddr {
	return nl.LinkAddr{Prefix: netip.MustParsePrefix(local), Peer: netip.MustParsePrefix(peer)}
}

// kernelAddrs is what netlink.Handle.AddrList, the full dump, reports.
func kernelAddrs(t *testing.T, h *netlink.Handle, l netlink.Link, family int) []nl.LinkAddr {
	t.Helper()
	as, err := h.AddrList(l, family)
	if err != nil {
		t.Fatal(err)
	}
	out := []nl.LinkAddr{}
	for _, a := range as {
		out = append(out, nl.LinkAddr{Prefix: nl.Prefix(a.IPNet), Peer: nl.Prefix(a.Peer)})
	}
	return out
}

// impls are AddrsOf and its fallback for kernels without strict checking.
var impls = []struct {
	name string
	fn   func(*netns.NS, int, int) ([]nl.LinkAddr, error)
}{{"strict", nl.AddrsOf}, {"fallback", nl.AddrsOfLoose}}

func TestAddrsOf(t *testing.T) {
	ns := nstest.New(t)
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// The links stay down: no link-local addresses come and go while the
	// test compares dumps.
	target := addVeth(t, h, "t0", "t1", nil)
	peer, _ := h.LinkByName("t1")
	other := addVeth(t, h, "o0", "o1", nil)
	bare, _ := h.LinkByName("o1")
	v4 := []nl.LinkAddr{la("10.1.0.1/24"), la("10.2.0.1/16"), ptp("10.3.0.1/32", "10.3.0.2/24")}
	v6 := []nl.LinkAddr{la("fd00:1::1/64"), la("fd00:2::1/64"), la("fe80::1/64"), ptp("fd00:3::1/128", "fd00:3::2/64")}
	for _, a := range slices.Concat(v4, v6) {
		addAddr(t, h, target, a)
	}
	// Addresses of other links, some in the same subnets, must not show.
	for _, a := range []nl.LinkAddr{la("10.1.0.2/24"), la("fd00:1::2/64")} {
		addAddr(t, h, peer, a)
	}
	for _, a := range []nl.LinkAddr{la("10.9.0.1/24"), la("10.1.0.1/24"), la("fd00:9::1/64")} {
		addAddr(t, h, other, a)
	}

	families := []struct {
		name   string
		family int
		want   []nl.LinkAddr
	}{
		{"v4", unix.AF_INET, v4},
		{"v6", unix.AF_INET6, v6},
		{"all", unix.AF_UNSPEC, slices.Concat(v4, v6)},
	}
	sorted := func(as []nl.LinkAddr) []nl.LinkAddr {
		return slices.SortedFunc(slices.Values(as), func(a, b nl.LinkAddr) int {
			if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
				return c
			}
			return a.Peer.Addr().Compare(b.Peer.Addr())
		})
	}
	for _, impl := range impls {
		for _, f := range families {
			t.Run(impl.name+"/"+f.name, func(t *testing.T) {
				got, err := impl.fn(ns, target.Attrs().Index, f.family)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(sorted(got), sorted(f.want)) {
					t.Errorf("got %v, want %v (any order)", got, f.want)
				}
				// Same addresses in the same order as the full dump.
				if k := kernelAddrs(t, h, target, f.family); !slices.Equal(got, k) {
					t.Errorf("got %v, AddrList reports %v", got, k)
				}
				got, err = impl.fn(ns, bare.Attrs().Index, f.family)
				if err != nil || len(got) != 0 {
					t.Errorf("link without addresses: %v, %v; want an empty list", got, err)
				}
				got, err = impl.fn(ns, 1<<20, f.family)
				if !errors.Is(err, podnet.ErrNotFound) {
					t.Errorf("missing ifindex: %v, %v; want ErrNotFound", got, err)
				}
				if impl.name == "strict" {
					// The kernel itself left out the other links.
					idx, err := nl.DumpedIndexes(ns, target.Attrs().Index, f.family)
					if err != nil || len(idx) != len(f.want) || slices.ContainsFunc(idx, func(i int) bool { return i != target.Attrs().Index }) {
						t.Errorf("kernel sent addresses of links %v, %v; want %d of link %d only", idx, err, len(f.want), target.Attrs().Index)
					}
				}
			})
		}
	}
	if _, err := nl.AddrsOf(ns, target.Attrs().Index, unix.AF_PACKET); err == nil {
		t.Error("AF_PACKET: no error")
	}
}

// TestAddrsOfManyAddresses: a link with more addresses than one read of
// the socket holds (the kernel sends the dump in parts of at most 32 KiB,
// here about 70 KiB) is listed whole, and the other link's as many
// addresses are not.
func TestAddrsOfManyAddresses(t *testing.T) {
	ns := nstest.New(t)
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	target := addVeth(t, h, "t0", "t1", nil)
	other, _ := h.LinkByName("t1")
	const n = 1000
	var want []nl.LinkAddr
	for i := range n {
		a := la(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).String() + "/16")
		addAddr(t, h, target, a)
		addAddr(t, h, other, la(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}).String()+"/16"))
		want = append(want, a)
	}
	for _, impl := range impls {
		got, err := impl.fn(ns, target.Attrs().Index, unix.AF_INET)
		if err != nil || !slices.Equal(got, kernelAddrs(t, h, target, unix.AF_INET)) || len(got) != n {
			t.Errorf("%s: %d addresses, %v; want the %d AddrList reports", impl.name, len(got), err, n)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: addresses not in the order added", impl.name)
		}
	}
}

// TestAddrsOfThreadNamespace checks the path that opens the socket on the
// calling thread: taken when the thread is in ns, and only then.
func TestAddrsOfThreadNamespace(t *testing.T) {
	ns, elsewhere := nstest.New(t), nstest.New(t)
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l := addVeth(t, h, "t0", "eth0", elsewhere)
	want := []nl.LinkAddr{la("10.1.0.1/24")}
	addAddr(t, h, l, want[0])
	for _, thread := range []*netns.NS{ns, elsewhere} {
		var got []nl.LinkAddr
		err := thread.Do(func() error {
			var err error
			got, err = nl.AddrsOf(ns, l.Attrs().Index, unix.AF_INET)
			return err
		})
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("called from a thread in %s: %v, %v; want %v", thread, got, err, want)
		}
	}
}

// BenchmarkAddrsOf lists the one IPv4 address of a link in a namespace of 1
// or 500 such links (veth ends whose peers are in another namespace, as on a
// node with pods), with AddrsOf and with netlink's AddrList (a full dump
// filtered in userspace, over a handle opened once). "here" calls AddrsOf
// from a thread already in the namespace, as a CNI plugin does for the node.
func BenchmarkAddrsOf(b *testing.B) {
	for _, n := range []int{1, 500} {
		b.Run(fmt.Sprintf("links=%d", n), func(b *testing.B) {
			ns, pods := nstest.New(b), nstest.New(b)
			h, err := nl.Handle(ns)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			var target netlink.Link
			for i := range n {
				l := addVeth(b, h, fmt.Sprintf("v%d", i), fmt.Sprintf("p%d", i), pods)
				addAddr(b, h, l, nl.LinkAddr{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 16)})
				if i == n/2 {
					target = l
				}
			}
			idx := target.Attrs().Index
			check := func(b *testing.B, got int, err error) {
				if err != nil || got != 1 {
					b.Fatalf("%d addresses, %v; want 1", got, err)
				}
			}
			b.Run("AddrsOf", func(b *testing.B) {
				for b.Loop() {
					as, err := nl.AddrsOf(ns, idx, unix.AF_INET)
					check(b, len(as), err)
				}
			})
			b.Run("AddrsOf-here", func(b *testing.B) {
				err := ns.Do(func() error {
					for b.Loop() {
						as, err := nl.AddrsOf(ns, idx, unix.AF_INET)
						check(b, len(as), err)
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			})
			b.Run("AddrList", func(b *testing.B) {
				for b.Loop() {
					as, err := nl.Dump(func() ([]netlink.Addr, error) { return h.AddrList(target, netlink.FAMILY_V4) })
					check(b, len(as), err)
				}
			})
		})
	}
}
