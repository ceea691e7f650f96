package nl_test

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns/nstest"
)

// TestForwarding: what netlink reports follows the sysctls, per family and
// per namespace.
func TestForwarding(t *testing.T) {
	ns, other := nstest.New(t), nstest.New(t)
	keys := map[int]string{unix.AF_INET: "net/ipv4/ip_forward", unix.AF_INET6: "net/ipv6/conf/all/forwarding"}
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, on := range []bool{true, false, true} {
			v := "0"
			if on {
				v = "1"
			}
			if err := sysctl.Set(ns, keys[family], v); err != nil {
				t.Fatal(err)
			}
			got, err := nl.Forwarding(ns, family)
			if err != nil || got != on {
				t.Errorf("family %d after %s=%s: Forwarding = %v, %v", family, keys[family], v, got, err)
			}
		}
		// The untouched namespace keeps its own value (a new namespace
		// copies IPv4's from the host's), whatever ns was set to.
		v, err := sysctl.Get(other, keys[family])
		if err != nil {
			t.Fatal(err)
		}
		if err := sysctl.Set(ns, keys[family], map[string]string{"0": "1", "1": "0"}[v]); err != nil {
			t.Fatal(err)
		}
		if got, err := nl.Forwarding(other, family); err != nil || got != (v == "1") {
			t.Errorf("family %d in an untouched namespace with %s=%s: Forwarding = %v, %v", family, keys[family], v, got, err)
		}
	}
	if _, err := nl.Forwarding(ns, unix.AF_PACKET); err == nil {
		t.Error("Forwarding of AF_PACKET: no error")
	}
}
