package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
)

// RequireEnv is the environment variable that turns skips into failures.
const RequireEnv = "PODNET_REQUIRE_PRIVILEGED"

// NamePrefix starts the name of every named namespace the fixtures create,
// so leftovers of a killed test run are recognisable.
const NamePrefix = "podnet-test-"

// Privileged reports whether the process holds CAP_SYS_ADMIN and
// CAP_NET_ADMIN in its effective set.
func Privileged() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		hexcaps, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hexcaps), 16, 64)
		if err != nil {
			return false
		}
		const netAdmin, sysAdmin = 12, 21
		return caps&(1<<netAdmin) != 0 && caps&(1<<sysAdmin) != 0
	}
	return false
}

// Require skips tb when the process is not privileged, or fails it when
// PODNET_REQUIRE_PRIVILEGED=1.
func Require(tb testing.TB) {
	tb.Helper()
	if Privileged() {
		return
	}
	const msg = "needs CAP_SYS_ADMIN and CAP_NET_ADMIN (run as root) to create network namespaces"
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatal(msg + "; " + RequireEnv + "=1 forbids skipping")
	}
	tb.Skip(msg)
}

// New returns a fresh anonymous namespace with loopback up. It is closed,
// and so destroyed with every link in it, when the test ends.
func New(tb testing.TB) *netns.NS {
	tb.Helper()
	Require(tb)
	ns, err := netns.New()
	if err != nil {
		tb.Fatalf("nstest: %v", err)
	}
	tb.Cleanup(func() { ns.Close() })
	if err := loUp(ns); err != nil {
		tb.Fatalf("nstest: %v", err)
	}
	return ns
}

// NewNamed returns a fresh namespace bind-mounted under /var/run/netns with a
// random name starting with NamePrefix (visible to `ip netns`), loopback up,
// deleted when the test ends. Use it when a program under test needs a path
// or a name.
func NewNamed(tb testing.TB) *netns.NS {
	tb.Helper()
	Require(tb)
	name := NamePrefix + randHex(4)
	ns, err := netns.NewNamed(name)
	if err != nil {
		tb.Fatalf("nstest: %v", err)
	}
	tb.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("nstest: %v", err)
		}
	})
	if err := loUp(ns); err != nil {
		tb.Fatalf("nstest: %v", err)
	}
	return ns
}

// Pair is two namespaces joined by a veth pair, each end named "eth0",
// addressed and up.
type Pair struct {
	A, B         *netns.NS
	AddrA, AddrB netip.Prefix
}

// NewPair returns two new anonymous namespaces joined by a veth pair with
// addresses 10.99.0.1/24 (A) and 10.99.0.2/24 (B) — private to the pair,
// since no other namespace can reach them.
func NewPair(tb testing.TB) Pair {
	tb.Helper()
	p := Pair{
		A: New(tb), B: New(tb),
		AddrA: netip.MustParsePrefix("10.99.0.1/24"),
		AddrB: netip.MustParsePrefix("10.99.0.2/24"),
	}
	if err := connect(p); err != nil {
		tb.Fatalf("nstest: connect pair: %v", err)
	}
	return p
}

func connect(p Pair) error {
	ha, err := nl.Handle(p.A)
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := nl.Handle(p.B)
	if err != nil {
		return err
	}
	defer hb.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "eth0"
	v := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(p.B.Fd())}
	if err := ha.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	for _, end := range []struct {
		h    *netlink.Handle
		addr netip.Prefix
	}{{ha, p.AddrA}, {hb, p.AddrB}} {
		l, err := end.h.LinkByName("eth0")
		if err != nil {
			return err
		}
		ipn := &net.IPNet{IP: end.addr.Addr().AsSlice(), Mask: net.CIDRMask(end.addr.Bits(), end.addr.Addr().BitLen())}
		if err := end.h.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
			return err
		}
		if err := end.h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

func loUp(ns *netns.NS) error {
	h, err := nl.Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", ns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", ns, err)
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
