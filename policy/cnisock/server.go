package cnisock

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Handler acts on the requests of a Server. Its methods are called
// concurrently, each with a validated request and a context bounded by
// the server's RequestTimeout; an error is sent back with the code its
// sentinel gives (ErrInvalid, ErrNotFound, context.DeadlineExceeded).
type Handler interface {
	// AddSandbox returns once the pod's policies hold for r.IPs.
	AddSandbox(ctx context.Context, r Request) error
	// DeleteSandbox forgets what AddSandbox learnt from r.ContainerID.
	DeleteSandbox(ctx context.Context, r Request) error
}

// DefaultRequestTimeout bounds a request's handling by default. It is
// below what podnet-bridge waits for a reply to ADD (10 s), so that the
// agent's own refusal, which says why, reaches the plugin first.
const DefaultRequestTimeout = 8 * time.Second

// Server answers requests on a listener. The zero value of every
// optional field is correct.
type Server struct {
	Handler Handler // required
	// RequestTimeout bounds each request's handling; 0 means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Logger receives one line per refused request; nil discards.
	Logger *slog.Logger
}

// Serve answers the requests of each connection ln accepts until ctx is
// done, then closes ln, waits for the requests in progress (their
// contexts are cancelled) and returns nil. It returns early only when ln
// fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Handler == nil {
		return fmt.Errorf("network policy agent socket: %w: no Handler", ErrInvalid)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	// Closed here too, so that the socket file Listen made is gone when
	// Serve returns, not only once the goroutine above gets to it.
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			return nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("network policy agent socket: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

// serveConn reads one request, has it handled and writes the reply.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	timeout := s.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	c.SetDeadline(time.Now().Add(timeout + time.Second)) // the reply's write too
	var r Request
	err := json.NewDecoder(io.LimitReader(c, MaxMessage)).Decode(&r)
	if err != nil {
		err = fmt.Errorf("%w: undecodable request: %v", ErrInvalid, err)
	} else if err = r.Validate(); err == nil {
		hctx, cancel := context.WithTimeout(ctx, timeout)
		if r.Op == Add {
			err = s.Handler.AddSandbox(hctx, r)
		} else {
			err = s.Handler.DeleteSandbox(hctx, r)
		}
		cancel()
	}
	reply := Reply{Version: Version, Code: codeOf(err)}
	if err != nil {
		reply.Message = err.Error()
		if s.Logger != nil {
			s.Logger.Warn("refused a CNI request", "op", r.Op, "pod", r.Namespace+"/"+r.Name, "container", r.ContainerID, "code", reply.Code, "err", err)
		}
	}
	b, _ := json.Marshal(reply)
	w := bufio.NewWriter(c)
	w.Write(append(b, '\n'))
	w.Flush()
}

// maxPath is the longest socket path Listen takes: sun_path holds 108
// bytes with the NUL, and Listen binds at the path plus ".tmp" first.
const maxPath = 103

// Listen makes a unix stream socket at path, mode 0600, creating its
// directory (0755) if needed. The socket is bound under a temporary name,
// restricted and then renamed over path, so that it is never reachable
// with looser permissions and a stale socket of an earlier run is
// replaced in one step. Closing the listener removes path if it is still
// this socket.
func Listen(path string) (net.Listener, error) {
	if !filepath.IsAbs(path) || len(path) > maxPath {
		return nil, fmt.Errorf("network policy agent socket %q: %w: want an absolute path of at most %d bytes", path, ErrInvalid, maxPath)
	}
	fail := func(err error) (net.Listener, error) {
		return nil, fmt.Errorf("network policy agent socket %q: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fail(err)
	}
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(err)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	ul.SetUnlinkOnClose(false)
	err = os.Chmod(tmp, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Stat(path)
	}
	if err != nil {
		ul.Close()
		os.Remove(tmp)
		return fail(err)
	}
	return &listener{UnixListener: ul, path: path, fi: fi}, nil
}

type listener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Stat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}
