package cnisock

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func valid() Request {
	return Request{Version: Version, Op: Add, ContainerID: "7f3a", Namespace: "shop", Name: "web-0", UID: "8c1e-77",
		IPs: []netip.Addr{addr("10.244.0.5"), addr("fd00:244::5")}}
}

// TestValidate: each field's rule; Del needs no address.
func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Request)
		ok     bool
	}{
		{"valid", func(*Request) {}, true},
		{"del without addresses", func(r *Request) { r.Op, r.IPs = Del, nil }, true},
		{"no uid", func(r *Request) { r.UID = "" }, true},
		{"version 0", func(r *Request) { r.Version = 0 }, false},
		{"version 2", func(r *Request) { r.Version = 2 }, false},
		{"unknown op", func(r *Request) { r.Op = "check" }, false},
		{"no container", func(r *Request) { r.ContainerID = "" }, false},
		{"container with a space", func(r *Request) { r.ContainerID = "a b" }, false},
		{"no namespace", func(r *Request) { r.Namespace = "" }, false},
		{"name with a slash", func(r *Request) { r.Name = "a/b" }, false},
		{"uppercase name", func(r *Request) { r.Name = "Web" }, false},
		{"namespace of 64 bytes", func(r *Request) { r.Namespace = strings.Repeat("a", 64) }, false},
		{"add without addresses", func(r *Request) { r.IPs = nil }, false},
		{"two IPv4", func(r *Request) { r.IPs = []netip.Addr{addr("10.0.0.1"), addr("10.0.0.2")} }, false},
		{"three addresses", func(r *Request) { r.IPs = append(r.IPs, addr("10.0.0.9")) }, false},
		{"unspecified", func(r *Request) { r.IPs = []netip.Addr{addr("0.0.0.0")} }, false},
		{"zero address", func(r *Request) { r.IPs = []netip.Addr{{}} }, false},
		{"mapped IPv4", func(r *Request) { r.IPs = []netip.Addr{addr("::ffff:10.0.0.1")} }, false},
	}
	for _, tc := range cases {
		r := valid()
		tc.change(&r)
		err := r.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: Validate() = %v, want ok=%v (else ErrInvalid)", tc.name, err, tc.ok)
		}
	}
}

// TestWire: the request and reply as they travel, field for field.
func TestWire(t *testing.T) {
	b, err := json.Marshal(valid())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":1,"op":"add","containerID":"7f3a","namespace":"shop","name":"web-0","uid":"8c1e-77","ips":["10.244.0.5","fd00:244::5"]}`
	if string(b) != want {
		t.Errorf("request\n got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(Reply{Version: Version, Code: NotFound, Message: "pod shop/web-0 unknown"})
	if want := `{"version":1,"code":"not-found","message":"pod shop/web-0 unknown"}`; string(b) != want {
		t.Errorf("reply\n got %s\nwant %s", b, want)
	}
}

// handler records requests and answers with what answer returns.
type handler struct {
	mu     sync.Mutex
	got    []Request
	answer func(ctx context.Context, r Request) error
}

func (h *handler) AddSandbox(ctx context.Context, r Request) error { return h.handle(ctx, r) }

func (h *handler) DeleteSandbox(ctx context.Context, r Request) error { return h.handle(ctx, r) }

func (h *handler) handle(ctx context.Context, r Request) error {
	h.mu.Lock()
	h.got = append(h.got, r)
	answer := h.answer
	h.mu.Unlock()
	if answer == nil {
		return nil
	}
	return answer(ctx, r)
}

func (h *handler) answerWith(f func(ctx context.Context, r Request) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.answer = f
}

// serve runs a Server with h at a fresh path until the test ends.
func serve(t *testing.T, h Handler, timeout time.Duration) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "policy.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Handler: h, RequestTimeout: timeout}).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

// TestRoundTrip: requests reach the handler as sent; its errors come
// back matching their sentinels, with its message.
func TestRoundTrip(t *testing.T) {
	h := &handler{}
	path := serve(t, h, time.Second)
	ctx := context.Background()
	if err := Send(ctx, path, valid()); err != nil {
		t.Fatal(err)
	}
	del := Request{Version: Version, Op: Del, ContainerID: "7f3a", Namespace: "shop", Name: "web-0"}
	if err := Send(ctx, path, del); err != nil {
		t.Fatal(err)
	}
	if len(h.got) != 2 || h.got[0].UID != "8c1e-77" || len(h.got[0].IPs) != 2 || h.got[0].IPs[1] != addr("fd00:244::5") || h.got[1].Op != Del {
		t.Errorf("handler got %+v", h.got)
	}
	for _, tc := range []struct {
		err  error
		want error
		code Code
	}{
		{errors.Join(errors.New("pod shop/web-0 not in the cache"), ErrNotFound), ErrNotFound, NotFound},
		{errors.Join(errors.New("pod shop/web-0 runs on node1"), ErrInvalid), ErrInvalid, Invalid},
		{context.DeadlineExceeded, context.DeadlineExceeded, Timeout},
		{errors.New("nftables said no"), nil, Failed},
	} {
		h.answerWith(func(context.Context, Request) error { return tc.err })
		err := Send(ctx, path, valid())
		var e *Error
		if !errors.As(err, &e) || e.Code != tc.code || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.err.Error()) {
			t.Errorf("handler error %q came back as %#v (%v), want code %s", tc.err, err, err, tc.code)
		}
	}
}

// TestTimeouts: the server bounds the handler (which sees its context
// end and says so); a client that stops waiting gets ErrUnavailable.
func TestTimeouts(t *testing.T) {
	h := &handler{answer: func(ctx context.Context, _ Request) error {
		<-ctx.Done()
		return ctx.Err()
	}}
	path := serve(t, h, 50*time.Millisecond)
	err := Send(context.Background(), path, valid())
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable) {
		t.Errorf("handler past the server's bound: %v, want a Timeout reply", err)
	}
	path = serve(t, h, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = Send(ctx, path, valid())
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("client past its bound: %v after %v, want ErrUnavailable at its deadline", err, time.Since(start))
	}
}

// TestNoAgent: without a socket, or with one nobody listens on (an
// agent killed), Send fails at once with ErrUnavailable naming the path;
// an invalid request is refused before any connection.
func TestNoAgent(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens
	for _, path := range []string{missing, stale} {
		start := time.Now()
		err := Send(context.Background(), path, valid())
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), path) || time.Since(start) > 100*time.Millisecond {
			t.Errorf("%s: %v after %v, want ErrUnavailable at once", path, err, time.Since(start))
		}
	}
	r := valid()
	r.Version = 2
	if err := Send(context.Background(), missing, r); !errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnavailable) {
		t.Errorf("invalid request: %v, want ErrInvalid before dialling", err)
	}
}

// TestServerRefusesBadInput: bytes that are no request, and a request of
// another version, get an Invalid reply that says why, and never reach
// the handler.
func TestServerRefusesBadInput(t *testing.T) {
	h := &handler{}
	path := serve(t, h, time.Second)
	for in, want := range map[string]string{
		"not json\n": "undecodable",
		`{"version":2,"op":"add","containerID":"c","namespace":"a","name":"b","ips":["10.0.0.1"]}` + "\n":   "protocol version 2, this side speaks 1",
		`{"version":1,"op":"add","containerID":"c","namespace":"a","name":"b","ips":["10.0.0.300"]}` + "\n": "undecodable",
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(in))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		var r Reply
		if err != nil || json.Unmarshal([]byte(line), &r) != nil || r.Version != Version || r.Code != Invalid || !strings.Contains(r.Message, want) {
			t.Errorf("%q: reply %q (%v), want invalid naming %q", in, line, err, want)
		}
	}
	if len(h.got) != 0 {
		t.Errorf("the handler got %+v", h.got)
	}
}

// TestListen: the socket is mode 0600 from the start, replaces a stale
// one, and goes when the listener closes, unless another has replaced
// it meanwhile.
func TestListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "podnet", "policy.sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o666); err != nil { // stale
		t.Fatal(err)
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v, want a socket of mode 0600", fi.Mode(), err)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary name left: %v", err)
	}
	ln2, err := Listen(path) // a second agent takes over
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("closing the replaced listener removed its successor's socket: %v", err)
	}
	ln2.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	if _, err := Listen("relative.sock"); !errors.Is(err, ErrInvalid) {
		t.Errorf("relative path: %v", err)
	}
}

// TestServeRemovesSocket: once Serve returns after its context ends, the
// socket file is gone, so a plugin started after the agent stopped fails
// at once instead of finding a name nobody listens on.
func TestServeRemovesSocket(t *testing.T) {
	for i := 0; i < 200; i++ {
		path := filepath.Join(t.TempDir(), "policy.sock")
		ln, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- (&Server{Handler: &handler{}}).Serve(ctx, ln) }()
		cancel()
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("run %d: socket left after Serve returned: %v", i, err)
		}
	}
}
