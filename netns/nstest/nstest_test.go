package nstest

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewHasLoopbackUp(t *testing.T) {
	ns := New(t)
	h, err := nl.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("lo: %v up=%v", err, err == nil && lo.Attrs().Flags&net.FlagUp != 0)
	}
	if _, err := probe.Ping(ns, netip.MustParseAddr("127.0.0.1"), time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestNamedRemovedAtCleanup(t *testing.T) {
	var path string
	t.Run("inner", func(t *testing.T) {
		ns := NewNamed(t)
		path = ns.Path()
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s survived its test: %v", path, err)
	}
}

func TestPairCarriesTraffic(t *testing.T) {
	p := NewPair(t)
	if _, err := probe.Ping(p.A, p.AddrB.Addr(), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(p.B, p.AddrA.Addr(), 3*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestLeakCheckSeesLeftovers makes a named namespace the way a careless test
// would and checks the leak check reports it, then removes it.
func TestLeakCheckSeesLeftovers(t *testing.T) {
	Require(t)
	before := snapshot()
	name := NamePrefix + "leak"
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	leaks := diff(before, snapshot())
	netns.DeleteNamed(name)
	for _, want := range []string{"netns " + name, "mount /run/netns/" + name} {
		if !slices.Contains(leaks, want) {
			t.Errorf("leak check reported %q, want it to include %q", leaks, want)
		}
	}
	if leaks := waitClean(before, 2*time.Second); len(leaks) != 0 {
		t.Errorf("after cleanup still reported: %v", leaks)
	}
}
