package service

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

// hcGet asks the health-check node port of ns as a load balancer would.
func hcGet(ns *netns.NS, port uint16) (code int, body healthReply, weight string, err error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/healthz")
	if err != nil {
		return 0, body, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	err = json.Unmarshal(b, &body)
	return resp.StatusCode, body, resp.Header.Get("X-Load-Balancing-Endpoint-Weight"), err
}

// TestHealthCheckNodePort: a Local Service's health-check node port
// answers 200 with kube-proxy's body while this node has a ready
// endpoint, 503 when its only local endpoint is terminating, and is
// closed when the policy turns Cluster, when the port moves, and on
// Close.
func TestHealthCheckNodePort(t *testing.T) {
	ns := nstest.New(t)
	p, err := New(Config{Backend: mustBackend(ModeNftables, ns), NodeName: "node0", ServeHealthChecks: true})
	must(t, err)
	t.Cleanup(func() { p.Close(); p.Cleanup(context.Background()) })
	s := svc("lb", "10.96.0.95", TCP, 80, []Endpoint{ep("10.200.0.2", "node0"), ep("10.200.1.2", "node1")})
	s.ExternalTrafficPolicy, s.HealthCheckNodePort = PolicyLocal, 32100
	apply(t, p, s)
	code, body, weight, err := hcGet(ns, 32100)
	if err != nil || code != 200 || body.Service.Namespace != "default" || body.Service.Name != "lb" ||
		body.LocalEndpoints != 1 || !body.ServiceProxyHealthy || weight != "1" {
		t.Fatalf("one local endpoint: %d %+v weight %q %v", code, body, weight, err)
	}
	s.Endpoints[0].Ready, s.Endpoints[0].Terminating = false, true
	apply(t, p, s)
	if code, body, _, err := hcGet(ns, 32100); err != nil || code != 503 || body.LocalEndpoints != 0 {
		t.Errorf("only a terminating local endpoint: %d %+v %v, want 503 and 0", code, body, err)
	}
	s.HealthCheckNodePort = 32101
	apply(t, p, s)
	if _, _, _, err := hcGet(ns, 32100); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("old port after the move: %v, want connection refused", err)
	}
	if code, _, _, err := hcGet(ns, 32101); err != nil || code != 503 {
		t.Errorf("new port: %d %v", code, err)
	}
	s.ExternalTrafficPolicy = PolicyCluster
	apply(t, p, s)
	if _, _, _, err := hcGet(ns, 32101); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("policy Cluster: %v, want the port closed", err)
	}
	s.ExternalTrafficPolicy = PolicyLocal
	apply(t, p, s)
	p.Close()
	if _, _, _, err := hcGet(ns, 32101); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after Close: %v, want the port closed", err)
	}
}
