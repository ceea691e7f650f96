// Package netpol benchmarks package policy on the real kernel: the cost of
// the first packet with 0 to 1000 policies, the programming latency and
// full sync through a real API server at 1k policies × 10k pods, and the
// window of a new pod. Run it with bench/netpol.sh.
package netpol

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// node is a node's namespace with the pods' bridge cnio0 (10.244.0.1/24)
// and pods on it, each a namespace of its own.
type node struct {
	tb    testing.TB
	ns    *netns.NS
	ports int
}

var gateway = netip.MustParseAddr("10.244.0.1")

func newNode(tb testing.TB) *node {
	n := &node{tb: tb, ns: nstest.New(tb)}
	_, err := bridge.Ensure(n.ns, bridge.Spec{Name: "cnio0"})
	must(tb, err)
	must(tb, bridge.EnsureAddr(n.ns, "cnio0", netip.PrefixFrom(gateway, 24), bridge.AddrOptions{}))
	must(tb, route.SetForwarding(n.ns, 4, true))
	return n
}

// addPod does what a bridge CNI ADD does for a pod at ip: a veth into a
// new namespace, its end on the bridge, the address and the default
// route.
func (n *node) addPod(ip netip.Addr) *netns.NS {
	pod := nstest.New(n.tb)
	n.ports++
	port := fmt.Sprintf("vp%d", n.ports)
	_, err := veth.Create(n.ns, veth.Spec{Name: port, PeerName: "eth0", PeerNS: pod, AddrGenModeNone: true, PeerAddrGenModeNone: true})
	must(n.tb, err)
	must(n.tb, bridge.Attach(n.ns, "cnio0", port, bridge.PortOptions{}))
	must(n.tb, addr.Ensure(pod, "eth0", netip.PrefixFrom(ip, 24)))
	must(n.tb, route.EnsureDefault(pod, gateway, "eth0"))
	return pod
}

// serve accepts and closes TCP connections on ap in ns until the test
// ends.
func serve(tb testing.TB, ns *netns.NS, ap netip.AddrPort) {
	var ln net.Listener
	must(tb, ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", ap.String())
		return err
	}))
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// dialer connects without lingering (RST on close), so that a second of
// connections leaves no TIME_WAIT behind.
func dialer(timeout time.Duration) net.Dialer {
	return net.Dialer{Timeout: timeout, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
		})
	}}
}

// connect reports whether one TCP connection from ns to ap succeeds
// within timeout.
func connect(ns *netns.NS, ap netip.AddrPort, timeout time.Duration) bool {
	ok := false
	ns.Do(func() error {
		d := dialer(timeout)
		c, err := d.Dial("tcp", ap.String())
		if err == nil {
			c.Close()
			ok = true
		}
		return nil
	})
	return ok
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// quantile returns the q-quantile of v (nearest rank).
func quantile(v []float64, q float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// kernelMemory is the kernel's unreclaimable slab plus vmalloc, where
// nf_tables keeps tables, sets and elements.
func kernelMemory(tb testing.TB) int64 {
	f, err := os.Open("/proc/meminfo")
	must(tb, err)
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && (fs[0] == "SUnreclaim:" || fs[0] == "VmallocUsed:") {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			total += kb << 10
		}
	}
	return total
}

// settledMemory returns kernelMemory once four readings 300 ms apart lie
// within 2 MiB (namespaces removed earlier free their state in the
// kernel's cleanup work), or after 60 s.
func settledMemory(tb testing.TB) int64 {
	last, stable := kernelMemory(tb), 0
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && stable < 3; {
		time.Sleep(300 * time.Millisecond) // sampling interval
		m := kernelMemory(tb)
		if d := m - last; d < 2<<20 && d > -2<<20 {
			stable++
		} else {
			stable = 0
		}
		last = m
	}
	return last
}
