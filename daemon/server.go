package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a Prometheus registry holding the Go runtime
// collector (go_...) and the process collector (process_...).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Route is one more path a server answers, with its handler.
type Route struct {
	Path    string
	Handler http.Handler
}

// ServeMetrics serves, on the TCP address addr, /metrics from metrics in
// Prometheus' exposition format, /healthz by healthz, /livez, which
// answers 200 "ok", and the routes given. It listens before returning,
// so a bad or busy address is an error here, not a line in a log; it then
// logs "serving metrics" with the address it listens on (the port chosen
// when addr asks for port 0), which is also the returned server's Addr.
// The server runs until it is closed.
func ServeMetrics(addr string, metrics prometheus.Gatherer, healthz http.Handler, log *slog.Logger, routes ...Route) (*http.Server, error) {
	return serve(addr, "serving metrics", log, append([]Route{{"/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{})}, {"/healthz", healthz}}, routes...))
}

// ServeHealthz serves /healthz by healthz and /livez on addr, as
// ServeMetrics does, for a health port of its own (kube-proxy's
// --healthz-bind-address, 0.0.0.0:10256), which node load balancers and
// probes reach without the metrics. It logs "serving health checks".
func ServeHealthz(addr string, healthz http.Handler, log *slog.Logger) (*http.Server, error) {
	return serve(addr, "serving health checks", log, []Route{{"/healthz", healthz}})
}

func serve(addr, what string, log *slog.Logger, routes []Route) (*http.Server, error) {
	mux := http.NewServeMux()
	for _, r := range routes {
		mux.Handle(r.Path, r.Handler)
	}
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err // net.OpError names the address: "listen tcp ...: bind: address already in use"
	}
	log.Info(what, "addr", l.Addr().String())
	srv := &http.Server{Addr: l.Addr().String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return srv, nil
}
