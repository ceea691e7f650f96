package cni

import (
	"net"
	"net/netip"
	"testing"
)

func TestConvert(t *testing.T) {
	for _, s := range []string{"10.200.0.4/24", "fd00:200::4/64", "10.0.0.0/8"} {
		p := netip.MustParsePrefix(s)
		if got := Prefix(IPNet(p)); got != p {
			t.Errorf("Prefix(IPNet(%s)) = %s", p, got)
		}
	}
	mapped := net.IPNet{IP: net.ParseIP("10.200.0.4"), Mask: net.CIDRMask(24, 32)} // 16-byte IP
	if got := Prefix(mapped); got != netip.MustParsePrefix("10.200.0.4/24") {
		t.Errorf("Prefix of a 16-byte IPv4 = %s", got)
	}
	if Prefix(net.IPNet{}).IsValid() || Addr(nil).IsValid() || IP(netip.Addr{}) != nil || IPNet(netip.Prefix{}).IP != nil {
		t.Error("zero values do not convert to zero values")
	}
	if a := Addr(net.ParseIP("::ffff:10.1.2.3")); a != netip.MustParseAddr("10.1.2.3") {
		t.Errorf("Addr of a mapped address = %s", a)
	}
}
