package main

import (
	"io"
	"net"
	"sync"

	"github.com/podnet/podnet/netns"
)

// forwarder carries the TCP connections made to addr inside a proxy's
// namespace to the same address in this program's namespace, where the
// API server listens on loopback. The proxy's kubeconfig then works
// unchanged (the serving certificate names 127.0.0.1) and no link, route
// or rule joins the two namespaces.
type forwarder struct {
	l     net.Listener
	addr  string
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// forward listens on addr inside ns until close.
func forward(ns *netns.NS, addr string) (*forwarder, error) {
	f := &forwarder{addr: addr, conns: map[net.Conn]struct{}{}}
	// A socket keeps the namespace it was made in.
	err := ns.Do(func() error {
		var err error
		f.l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		in, err := f.l.Accept()
		if err != nil {
			return // closed
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.pipe(in)
		}()
	}
}

// pipe copies both ways between in and a new connection to the API server
// until either side ends.
func (f *forwarder) pipe(in net.Conn) {
	out, err := net.Dial("tcp", f.addr)
	if err != nil || !f.track(in, out) {
		in.Close()
		if out != nil {
			out.Close()
		}
		return
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) { io.Copy(dst, src); done <- struct{}{} }
	go cp(out, in)
	go cp(in, out)
	<-done
	in.Close()
	out.Close()
	<-done
	f.mu.Lock()
	delete(f.conns, in)
	delete(f.conns, out)
	f.mu.Unlock()
}

// track records a connection pair; false once the forwarder is closed.
func (f *forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

// close stops listening, ends every connection and waits for the copies.
func (f *forwarder) close() {
	f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}
