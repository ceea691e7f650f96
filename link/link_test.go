package link_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestLoopbackUpDown(t *testing.T) {
	nstest.Require(t)
	ns, err := netns.New() // lo starts down
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	if _, err := probe.Ping(ns, lo, 200*time.Millisecond); err == nil {
		t.Fatal("loopback answers while down")
	}
	if err := link.SetUp(ns, "lo"); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(ns, lo, 2*time.Second); err != nil {
		t.Fatalf("after SetUp: %v", err)
	}
	if err := link.SetDown(ns, "lo"); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(ns, lo, 200*time.Millisecond); err == nil {
		t.Fatal("loopback answers after SetDown")
	}
	if err := link.SetUp(ns, "nosuch"); !errors.Is(err, link.ErrNotFound) {
		t.Errorf("missing link: %v", err)
	}
	if err := link.SetUp(ns, "a/b"); !errors.Is(err, link.ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
}

func TestList(t *testing.T) {
	p := nstest.NewPair(t)
	infos, err := link.List(p.A)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Name != "lo" || infos[0].Type != "loopback" || infos[1].Name != "eth0" || infos[1].Type != "veth" || !infos[1].Up {
		t.Fatalf("List = %+v", infos)
	}
	peer, _ := link.List(p.B)
	if infos[1].Peer != peer[1].Index {
		t.Errorf("eth0 peer %d, other end has index %d", infos[1].Peer, peer[1].Index)
	}
}
