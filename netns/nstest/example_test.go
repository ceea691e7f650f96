package nstest_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/netns/nstest"
)

// A test of your own code in a throwaway namespace. Use nstest.Main as
// TestMain so the run fails if anything is left behind:
//
//	func TestMain(m *testing.M) { nstest.Main(m) }
func ExampleNew() {
	testBridge := func(t *testing.T) {
		ns := nstest.New(t) // skipped (or failed, if required) without privileges
		if _, err := bridge.Ensure(ns, bridge.Spec{Name: "cnio0"}); err != nil {
			t.Fatal(err)
		}
		// ns and cnio0 are gone when the test ends.
	}
	_ = testBridge
}

// Two namespaces joined by a veth pair, ready for traffic.
func ExampleNewPair() {
	testPair := func(t *testing.T) {
		p := nstest.NewPair(t)
		_ = p.AddrB.Addr() // 10.99.0.2, reachable from p.A
		_ = netip.Addr{}
		_ = time.Second
	}
	_ = testPair
}
