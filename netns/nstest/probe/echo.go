package probe

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/podnet/podnet/netns"
)

// Server answers every TCP connection and UDP datagram on its address with
// one line: the remote address it saw ("10.240.0.20:40112") and its name.
// That is how tests and demos show whether traffic was NATed on the way.
type Server struct {
	Addr netip.AddrPort
	name string
	tcp  net.Listener
	udp  net.PacketConn
	wg   sync.WaitGroup
}

// Serve starts a Server inside ns on addr (TCP and UDP on the same port; a
// zero port picks a free one). name is included in every answer so a
// client can tell which backend answered. Close stops it.
func Serve(ns *netns.NS, addr netip.AddrPort, name string) (*Server, error) {
	s := &Server{name: name}
	err := ns.Do(func() error {
		var err error
		s.tcp, err = net.Listen("tcp", addr.String())
		if err != nil {
			return err
		}
		port := s.tcp.Addr().(*net.TCPAddr).AddrPort().Port()
		s.udp, err = net.ListenPacket("udp", netip.AddrPortFrom(addr.Addr(), port).String())
		if err != nil {
			s.tcp.Close()
			return err
		}
		s.Addr = netip.AddrPortFrom(addr.Addr(), port)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("serve %s in netns %q: %w", addr, ns, err)
	}
	s.wg.Add(2)
	go s.serveTCP()
	go s.serveUDP()
	return s, nil
}

func (s *Server) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s %s\n", c.RemoteAddr(), s.name)
		c.Close()
	}
}

func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 1500)
	for {
		_, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		s.udp.WriteTo(fmt.Appendf(nil, "%s %s\n", from, s.name), from)
	}
}

// Close stops the server and waits for its goroutines.
func (s *Server) Close() error {
	s.tcp.Close()
	s.udp.Close()
	s.wg.Wait()
	return nil
}

// Reply is what a Server answered.
type Reply struct {
	Source netip.AddrPort // the client address the server saw
	Name   string         // the server's name
}

// Ask connects from inside ns to dst over network ("tcp" or "udp"), reads
// the server's one-line answer and returns it. For UDP it sends one
// datagram and waits up to timeout for the answer.
func Ask(ns *netns.NS, network string, dst netip.AddrPort, timeout time.Duration) (Reply, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, dst.String(), timeout)
		return err
	})
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s from netns %q: %w", network, dst, ns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := c.Write([]byte("who\n")); err != nil {
			return Reply{}, fmt.Errorf("udp %s from netns %q: %w", dst, ns, err)
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s from netns %q: read: %w", network, dst, ns, err)
	}
	src, name, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s: bad answer %q", network, dst, line)
	}
	return Reply{Source: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Name: name}, nil
}

// Poll asks like Ask, 500 ms at a time, until an answer comes or total has
// passed: for rules or routes that have just been written and servers
// that have just started.
func Poll(ns *netns.NS, network string, dst netip.AddrPort, total time.Duration) (Reply, error) {
	deadline := time.Now().Add(total)
	for {
		r, err := Ask(ns, network, dst, 500*time.Millisecond)
		if err == nil || time.Now().After(deadline) {
			return r, err
		}
	}
}
