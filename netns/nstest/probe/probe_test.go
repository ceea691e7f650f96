package probe_test

import (
	"bufio"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestAskSeesSource(t *testing.T) {
	p := nstest.NewPair(t)
	s, err := probe.Serve(p.B, netip.AddrPortFrom(p.AddrB.Addr(), 0), "b")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, network := range []string{"tcp", "udp"} {
		r, err := probe.Ask(p.A, network, s.Addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Source.Addr() != p.AddrA.Addr() || r.Name != "b" {
			t.Errorf("%s: %+v, want source %v from b", network, r, p.AddrA.Addr())
		}
	}
	if _, err := probe.Ping(p.A, p.AddrB.Addr(), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	// Nothing listens there: a clear error, not a hang.
	if _, err := probe.Ask(p.A, "tcp", netip.AddrPortFrom(p.AddrB.Addr(), 1), time.Second); err == nil {
		t.Error("connection to a closed port succeeded")
	}
}

// TestServeEcho: one connection carries several lines, each answered
// with the prefix and the line.
func TestServeEcho(t *testing.T) {
	p := nstest.NewPair(t)
	s, err := probe.ServeEcho(p.B, netip.AddrPortFrom(p.AddrB.Addr(), 0), "b ")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var conn net.Conn
	if err := p.A.Do(func() (err error) { conn, err = net.DialTimeout("tcp", s.Addr.String(), 3*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(conn)
	for _, msg := range []string{"one\n", "two\n"} {
		conn.Write([]byte(msg))
		if line, err := r.ReadString('\n'); err != nil || line != "b "+msg {
			t.Errorf("answer to %q: %q, %v", msg, line, err)
		}
	}
}
