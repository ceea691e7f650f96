package deploy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/podnet/podnet/netns"
)

// apiRequest is one request a program made, as RBAC sees it.
type apiRequest struct {
	Verb     string // list, watch, get, patch, …
	Group    string // "" for the core group
	Resource string // with its subresource: nodes/status
	Code     int    // the API server's answer
	URL      string
}

func (r apiRequest) key() string { return permission{r.Group, r.Resource, r.Verb}.String() }

// permission is one verb on one resource, the unit of an RBAC rule.
type permission struct{ Group, Resource, Verb string }

func (p permission) String() string {
	g := p.Group
	if g == "" {
		g = "core"
	}
	return p.Verb + " " + p.Resource + " (" + g + ")"
}

// apiRecorder stands where the ConfigMap points the programs — "the API
// server's real address" — inside a node's network namespace, forwards
// every request to kubetest's API server on the machine's loopback, and
// records what RBAC answered.
type apiRecorder struct {
	srv    *httptest.Server
	caPEM  []byte
	mu     sync.Mutex
	seen   []apiRequest
	addr   netip.AddrPort
	target *url.URL
}

// newRecorder serves HTTPS on 127.0.0.1 of ns (the address client-go's
// in-cluster configuration dials, from the KUBERNETES_SERVICE_HOST/PORT
// the ConfigMap sets) and forwards to api. It stops when the test ends.
func newRecorder(t *testing.T, ns *netns.NS, api *rest.Config) *apiRecorder {
	t.Helper()
	target, err := url.Parse(api.Host)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(api.TLSClientConfig.CAData)
	r := &apiRecorder{target: target}
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		FlushInterval: -1, // watches stream
		ModifyResponse: func(resp *http.Response) error {
			r.record(resp.Request, resp.StatusCode)
			return nil
		},
	}
	var l net.Listener
	if err := ns.Do(func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	r.srv = httptest.NewUnstartedServer(proxy)
	r.srv.Listener.Close()
	r.srv.Listener = l
	r.srv.StartTLS()
	t.Cleanup(func() {
		r.srv.CloseClientConnections()
		r.srv.Close()
	})
	r.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
	r.addr = netip.MustParseAddrPort(l.Addr().String())
	return r
}

func (r *apiRecorder) record(req *http.Request, code int) {
	verb, group, resource := requestAttributes(req)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, apiRequest{Verb: verb, Group: group, Resource: resource, Code: code, URL: req.Method + " " + req.URL.RequestURI()})
}

// requests returns what was asked so far.
func (r *apiRecorder) requests() []apiRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// forbidden returns the requests RBAC refused.
func (r *apiRecorder) forbidden() []apiRequest {
	var out []apiRequest
	for _, q := range r.requests() {
		if q.Code == http.StatusForbidden {
			out = append(out, q)
		}
	}
	return out
}

// used returns the permissions the requests exercised, sorted.
func (r *apiRecorder) used() []string {
	var out []string
	for _, q := range r.requests() {
		if q.Resource != "" && !slices.Contains(out, q.key()) {
			out = append(out, q.key())
		}
	}
	slices.Sort(out)
	return out
}

// requestAttributes is what the API server's request-info resolver makes
// of a resource request: the RBAC verb, API group and resource (with
// subresource). Non-resource requests (discovery) have resource "".
//
//	GET /api/v1/nodes?watch=true          -> watch, "", nodes
//	PATCH /api/v1/nodes/n0/status         -> patch, "", nodes/status
//	GET /apis/discovery.k8s.io/v1/endpointslices -> list, discovery.k8s.io, endpointslices
func requestAttributes(req *http.Request) (verb, group, resource string) {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		group, parts = parts[1], parts[3:]
	default:
		return strings.ToLower(req.Method), "", ""
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	resource = parts[0]
	name := len(parts) > 1
	if len(parts) > 2 {
		resource += "/" + parts[2]
	}
	q := req.URL.Query()
	switch req.Method {
	case http.MethodGet:
		switch {
		case q.Get("watch") == "true" || q.Get("watch") == "1":
			verb = "watch"
		case name:
			verb = "get"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
		if !name {
			verb = "deletecollection"
		}
	default:
		verb = strings.ToLower(req.Method)
	}
	return verb, group, resource
}

func (q apiRequest) String() string { return fmt.Sprintf("%s -> %d", q.URL, q.Code) }
