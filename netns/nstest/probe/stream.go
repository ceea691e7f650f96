package probe

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/podnet/podnet/netns"
)

// EchoServer keeps every TCP connection open and answers each line the
// client sends with the same line after its prefix: what tests of
// established connections (which must outlive a rule change) talk to.
type EchoServer struct {
	Addr   netip.AddrPort
	prefix string
	l      net.Listener
	wg     sync.WaitGroup
}

// ServeEcho starts an EchoServer inside ns on addr (a zero port picks a
// free one); each answer is prefix followed by the line received. Close
// stops it.
func ServeEcho(ns *netns.NS, addr netip.AddrPort, prefix string) (*EchoServer, error) {
	s := &EchoServer{prefix: prefix}
	err := ns.Do(func() (err error) {
		s.l, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("serve echo %s in netns %q: %w", addr, ns, err)
	}
	s.Addr = s.l.Addr().(*net.TCPAddr).AddrPort()
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *EchoServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s%s", s.prefix, line)
			}
		}()
	}
}

// Close stops accepting and waits for the connections in progress, which
// end when their clients close them.
func (s *EchoServer) Close() error {
	err := s.l.Close()
	s.wg.Wait()
	return err
}
