package nl

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	mnl "github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"
)

// encode encodes attributes with fn, failing t on an error.
func encode(t *testing.T, fn func(ae *mnl.AttributeEncoder)) []byte {
	t.Helper()
	ae := mnl.NewAttributeEncoder()
	fn(ae)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newAddr is the payload of an RTM_NEWADDR message; invalid addresses are
// left out.
func newAddr(t *testing.T, family, ifindex, bits int, local, address netip.Addr) []byte {
	b := ifAddrmsg(family, ifindex)
	b[1] = byte(bits)
	return append(b, encode(t, func(ae *mnl.AttributeEncoder) {
		if address.IsValid() {
			ae.Bytes(unix.IFA_ADDRESS, address.AsSlice())
		}
		if local.IsValid() {
			ae.Bytes(unix.IFA_LOCAL, local.AsSlice())
		}
	})...)
}

func TestParseAddr(t *testing.T) {
	a := netip.MustParseAddr
	var none netip.Addr
	for _, tc := range []struct {
		name          string
		msg           []byte
		family        int
		want          LinkAddr
		ok, wantError bool
	}{
		{"v4", newAddr(t, unix.AF_INET, 3, 24, a("10.1.0.1"), a("10.1.0.1")), unix.AF_UNSPEC, LinkAddr{Prefix: netip.MustParsePrefix("10.1.0.1/24")}, true, false},
		{"v4 peer", newAddr(t, unix.AF_INET, 3, 24, a("10.3.0.1"), a("10.3.0.2")), unix.AF_INET,
			LinkAddr{Prefix: netip.MustParsePrefix("10.3.0.1/32"), Peer: netip.MustParsePrefix("10.3.0.2/24")}, true, false},
		{"v6 address only", newAddr(t, unix.AF_INET6, 3, 64, none, a("fd00::1")), unix.AF_INET6, LinkAddr{Prefix: netip.MustParsePrefix("fd00::1/64")}, true, false},
		{"v6 peer", newAddr(t, unix.AF_INET6, 3, 64, a("fd00::1"), a("fd00::2")), unix.AF_UNSPEC,
			LinkAddr{Prefix: netip.MustParsePrefix("fd00::1/128"), Peer: netip.MustParsePrefix("fd00::2/64")}, true, false},
		{"other link", newAddr(t, unix.AF_INET, 4, 24, a("10.1.0.1"), a("10.1.0.1")), unix.AF_UNSPEC, LinkAddr{}, false, false},
		{"other family", newAddr(t, unix.AF_INET, 3, 24, a("10.1.0.1"), a("10.1.0.1")), unix.AF_INET6, LinkAddr{}, false, false},
		{"no address", newAddr(t, unix.AF_INET, 3, 24, none, none), unix.AF_INET, LinkAddr{}, false, true},
		{"short", []byte{unix.AF_INET, 24}, unix.AF_INET, LinkAddr{}, false, true},
		{"bad attribute", append(ifAddrmsg(unix.AF_INET, 3), 9, 0, 1), unix.AF_INET, LinkAddr{}, false, true},
	} {
		got, ok, err := parseAddr(tc.msg, 3, tc.family)
		if got != tc.want || ok != tc.ok || (err != nil) != tc.wantError {
			t.Errorf("%s: got %v, %v, %v; want %v, %v, error %v", tc.name, got, ok, err, tc.want, tc.ok, tc.wantError)
		}
	}
}

// TestDumpAddrsInterrupted: a dump with NLM_F_DUMP_INTR on any part is
// read again, up to dumpRetries times in all; messages of other links and
// the parts of a multi-part reply are handled as the kernel sends them.
func TestDumpAddrsInterrupted(t *testing.T) {
	a := netip.MustParseAddr
	for _, interrupted := range []int{0, 1, dumpRetries - 1, dumpRetries} {
		calls := 0
		c := nltest.Dial(func(req []mnl.Message) ([]mnl.Message, error) {
			calls++
			r := req[0]
			if r.Header.Type != unix.RTM_GETADDR || r.Header.Flags != mnl.Request|mnl.Dump || !slices.Equal(r.Data, ifAddrmsg(unix.AF_UNSPEC, 3)) {
				t.Errorf("request %+v", r)
			}
			h := mnl.Header{Type: unix.RTM_NEWADDR, Sequence: r.Header.Sequence, PID: nltest.PID}
			msgs := []mnl.Message{
				{Header: h, Data: newAddr(t, unix.AF_INET, 3, 24, a("10.1.0.1"), a("10.1.0.1"))},
				{Header: h, Data: newAddr(t, unix.AF_INET, 4, 24, a("10.2.0.1"), a("10.2.0.1"))},
				{Header: h, Data: newAddr(t, unix.AF_INET6, 3, 64, none(), a("fd00::1"))},
				{Header: h},
			}
			if calls <= interrupted {
				msgs[2].Header.Flags |= mnl.DumpInterrupted
			}
			return nltest.Multipart(msgs)
		})
		got, err := Dump(func() ([]LinkAddr, error) { return dumpAddrs(c, 3, unix.AF_UNSPEC) })
		c.Close()
		want := []LinkAddr{{Prefix: netip.MustParsePrefix("10.1.0.1/24")}, {Prefix: netip.MustParsePrefix("fd00::1/64")}}
		if interrupted == dumpRetries {
			if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpRetries {
				t.Errorf("always interrupted: %v, %v after %d dumps; want ErrDumpInterrupted after %d", got, err, calls, dumpRetries)
			}
			continue
		}
		if err != nil || !slices.Equal(got, want) || calls != interrupted+1 {
			t.Errorf("interrupted %d times: %v, %v after %d dumps; want %v after %d", interrupted, got, err, calls, want, interrupted+1)
		}
	}
}

func none() netip.Addr { return netip.Addr{} }

func TestParsePortState(t *testing.T) {
	linkinfo := func(kind string, state int) []byte {
		return encode(t, func(ae *mnl.AttributeEncoder) {
			ae.String(unix.IFLA_IFNAME, "p0")
			ae.Nested(unix.IFLA_LINKINFO, func(ae *mnl.AttributeEncoder) error {
				ae.String(unix.IFLA_INFO_KIND, "veth")
				if kind != "" {
					ae.String(unix.IFLA_INFO_SLAVE_KIND, kind)
					ae.Nested(unix.IFLA_INFO_SLAVE_DATA, func(ae *mnl.AttributeEncoder) error {
						ae.Uint16(unix.IFLA_BRPORT_PRIORITY, 32)
						if state >= 0 {
							ae.Uint8(unix.IFLA_BRPORT_STATE, uint8(state))
						}
						return nil
					})
				}
				return nil
			})
			ae.Uint32(unix.IFLA_MTU, 1500)
		})
	}
	for _, tc := range []struct {
		name   string
		attrs  []byte
		state  uint8
		isPort bool
	}{
		{"forwarding", linkinfo("bridge", PortForwarding), PortForwarding, true},
		{"disabled", linkinfo("bridge", PortDisabled), PortDisabled, true},
		{"bond slave", linkinfo("bond", PortForwarding), 0, false},
		{"no master", linkinfo("", -1), 0, false},
		{"no linkinfo", encode(t, func(ae *mnl.AttributeEncoder) { ae.String(unix.IFLA_IFNAME, "p0") }), 0, false},
	} {
		state, isPort, err := parsePortState(tc.attrs)
		if err != nil || state != tc.state || isPort != tc.isPort {
			t.Errorf("%s: %d, %v, %v; want %d, %v", tc.name, state, isPort, err, tc.state, tc.isPort)
		}
	}
}

func TestParseForwarding(t *testing.T) {
	reply := func(attrs ...func(ae *mnl.AttributeEncoder)) []mnl.Message {
		data := []byte{unix.AF_INET, 0, 0, 0}
		for _, fn := range attrs {
			data = append(data, encode(t, fn)...)
		}
		return []mnl.Message{{Header: mnl.Header{Type: unix.RTM_NEWNETCONF}, Data: data}}
	}
	index := func(ae *mnl.AttributeEncoder) { ae.Int32(netconfaIfindex, netconfaIfindexAll) }
	fwd := func(v uint32) func(ae *mnl.AttributeEncoder) {
		return func(ae *mnl.AttributeEncoder) { ae.Uint32(netconfaForwarding, v) }
	}
	for _, tc := range []struct {
		name      string
		msgs      []mnl.Message
		on, error bool
	}{
		{"on", reply(index, fwd(1)), true, false},
		{"off", reply(index, fwd(0)), false, false},
		{"missing", reply(index), false, true},
		{"short value", reply(index, func(ae *mnl.AttributeEncoder) { ae.Uint8(netconfaForwarding, 1) }), false, true},
		{"no reply", nil, false, true},
	} {
		on, err := parseForwarding(tc.msgs)
		if on != tc.on || (err != nil) != tc.error {
			t.Errorf("%s: %v, %v; want %v, error %v", tc.name, on, err, tc.on, tc.error)
		}
	}
}
