package service

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/podnet/podnet/netns"
)

// healthChecks serves the health-check node ports of Services with an
// external traffic policy Local (kube-proxy's service health server): a
// load balancer asks every node, and sends traffic only to those that
// answer 200, the nodes with a ready local endpoint.
type healthChecks struct {
	ns  *netns.NS
	log *slog.Logger
	mu  sync.Mutex
	// ports are the ports served, with what each answers.
	ports map[uint16]*healthPort
}

// healthPort is one listening health-check node port.
type healthPort struct {
	l   net.Listener
	srv *http.Server
	mu  sync.Mutex
	st  healthState
}

// healthState is what a health-check port answers.
type healthState struct {
	name    Name
	local   int  // ready endpoints on this node
	healthy bool // the proxy's last sync succeeded
}

// healthReply is kube-proxy's JSON body.
type healthReply struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// ServeHTTP answers any GET with the Service's local endpoint count:
// 200 when there is one and the proxy is healthy, 503 otherwise.
func (hp *healthPort) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	hp.mu.Lock()
	st := hp.st
	hp.mu.Unlock()
	var r healthReply
	r.Service.Namespace, r.Service.Name = st.name.Namespace, st.name.Name
	r.LocalEndpoints, r.ServiceProxyHealthy = st.local, st.healthy
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(st.local))
	if st.local == 0 || !st.healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(r)
}

// update makes the served ports those of want: new ones are opened in
// the namespace (on every address), gone ones closed, the others answer
// want's state from now on. A port that cannot be opened is logged and
// tried again at the next update.
func (h *healthChecks) update(want map[uint16]healthState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, hp := range h.ports {
		if _, ok := want[port]; !ok {
			hp.stop()
			delete(h.ports, port)
		}
	}
	for port, st := range want {
		hp := h.ports[port]
		if hp == nil {
			var err error
			if hp, err = h.listen(port); err != nil {
				h.log.Warn("cannot serve a health-check node port", "port", port, "service", st.name.String(), "err", err)
				continue
			}
			h.ports[port] = hp
		}
		hp.mu.Lock()
		hp.st = st
		hp.mu.Unlock()
	}
}

// listen opens port on every address of the namespace and serves it.
//
// Equivalent to: a listener on 0.0.0.0:PORT and [::]:PORT in the node's namespace
func (h *healthChecks) listen(port uint16) (*healthPort, error) {
	var l net.Listener
	err := h.ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		return err
	})
	if err != nil {
		return nil, err
	}
	hp := &healthPort{l: l}
	hp.srv = &http.Server{Handler: hp, ReadHeaderTimeout: 5 * time.Second}
	go hp.srv.Serve(l)
	return hp, nil
}

// stop closes the port: the listener itself first, since the server
// tracks it only once its goroutine has started serving.
func (hp *healthPort) stop() {
	hp.l.Close()
	hp.srv.Close()
}

// close stops every port.
func (h *healthChecks) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, hp := range h.ports {
		hp.stop()
		delete(h.ports, port)
	}
}

// healthStates returns what the health-check node ports of svcs answer:
// for each Service with one and an external policy Local, its ready
// endpoints on node (terminating ones do not count, so a node whose
// endpoints are all terminating fails the check).
func healthStates(svcs map[Name]*Service, node string, healthy bool) map[uint16]healthState {
	out := map[uint16]healthState{}
	for n, s := range svcs {
		if s.HealthCheckNodePort == 0 || s.ExternalTrafficPolicy != PolicyLocal {
			continue
		}
		st := healthState{name: n, healthy: healthy}
		for _, e := range s.Endpoints {
			if e.NodeName == node && node != "" && e.Ready {
				st.local++
			}
		}
		out[s.HealthCheckNodePort] = st
	}
	return out
}
