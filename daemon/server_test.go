package daemon_test

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/daemon"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func TestServeMetrics(t *testing.T) {
	reg := daemon.NewRegistry()
	syncs := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_syncs_total", Help: "Syncs"})
	reg.MustRegister(syncs)
	syncs.Add(3)
	unhealthy := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no sync for 1m0s", http.StatusServiceUnavailable)
	})
	var logs bytes.Buffer
	srv, err := daemon.ServeMetrics("127.0.0.1:0", reg, unhealthy, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.Contains(logs.String(), `msg="serving metrics" addr=`+srv.Addr) || strings.HasSuffix(srv.Addr, ":0") {
		t.Errorf("log %q does not name the bound address %s", logs.String(), srv.Addr)
	}
	base := "http://" + srv.Addr
	code, body := get(t, base+"/metrics")
	for _, want := range []string{"test_syncs_total 3", "go_goroutines ", "process_cpu_seconds_total "} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, no %q in:\n%s", code, want, body)
		}
	}
	if code, body := get(t, base+"/healthz"); code != http.StatusServiceUnavailable || body != "no sync for 1m0s\n" {
		t.Errorf("/healthz: %d %q, want the program's handler's 503", code, body)
	}
	if code, body := get(t, base+"/livez"); code != 200 || body != "ok\n" {
		t.Errorf("/livez: %d %q", code, body)
	}

	// A busy address fails at once, naming it.
	if _, err := daemon.ServeMetrics(srv.Addr, reg, unhealthy, slog.New(slog.DiscardHandler)); !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), srv.Addr) {
		t.Errorf("second server on %s: %v, want EADDRINUSE naming the address", srv.Addr, err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get(base + "/livez"); err == nil {
		resp.Body.Close()
		t.Errorf("/livez after Close: %s", resp.Status)
	}
}

// TestServeHealthzAndRoutes: a health port answers /healthz and /livez
// only; a metrics server answers the extra routes it is given.
func TestServeHealthzAndRoutes(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "healthy") })
	log := slog.New(slog.DiscardHandler)
	hz, err := daemon.ServeHealthz("127.0.0.1:0", ok, log)
	if err != nil {
		t.Fatal(err)
	}
	defer hz.Close()
	for path, want := range map[string]int{"/healthz": 200, "/livez": 200, "/metrics": 404} {
		if code, _ := get(t, "http://"+hz.Addr+path); code != want {
			t.Errorf("health port %s: %d, want %d", path, code, want)
		}
	}
	mode := daemon.Route{Path: "/proxyMode", Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "nftables") })}
	srv, err := daemon.ServeMetrics("127.0.0.1:0", daemon.NewRegistry(), ok, log, mode)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if code, body := get(t, "http://"+srv.Addr+"/proxyMode"); code != 200 || body != "nftables" {
		t.Errorf("/proxyMode: %d %q", code, body)
	}
}
