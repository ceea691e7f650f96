package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/internal/testenv/gobuild"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

var binDir string

func TestMain(m *testing.M) {
	gobuild.TestMainRun(m, &binDir, "podnet-service-proxy", ".", kubetest.Run)
}

const webManifest = `# two objects in one file
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 31088}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- addresses: [10.200.0.2]
  conditions: {ready: true}
  nodeName: node0
- addresses: [10.200.1.2]
  nodeName: node1
`

const dnsManifest = `{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
  "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "protocol": "UDP", "port": 53}, {"name": "dns-tcp", "protocol": "TCP", "port": 53}]}},
 {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "kube-dns-1", "namespace": "kube-system", "labels": {"kubernetes.io/service-name": "kube-dns"}},
  "addressType": "IPv4", "ports": [{"name": "dns", "protocol": "UDP", "port": 53}, {"name": "dns-tcp", "protocol": "TCP", "port": 53}],
  "endpoints": [{"addresses": ["10.200.0.5"]}]}
]}`

func writeFile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func proxyCmd(ns *netns.NS, args ...string) *exec.Cmd {
	return exec.Command(filepath.Join(binDir, "podnet-service-proxy"), append([]string{"--netns", ns.Path(), "--node-name", "node0", "--cluster-cidr", "10.200.0.0/16"}, args...)...)
}

// save returns the namespace's rules under both backends: iptables-save of
// nat and filter, then nft list ruleset.
func save(t *testing.T, ns *netns.NS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"iptables-save", "-t", "nat"}, {"iptables-save", "-t", "filter"}, {"nft", "list", "ruleset"}} {
		out, err := execns.Output(context.Background(), ns, nil, args[0], args[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(out)
	}
	return b.String()
}

// hasClusterIP reports whether rules (of either backend) send ip somewhere:
// an iptables match on ip/32 or an nftables element keyed by it.
func hasClusterIP(rules, ip string) bool {
	return strings.Contains(rules, ip+"/32") || strings.Contains(rules, ip+" . ")
}

// TestOnceAndCleanup: --once --backend iptables writes the rules of a
// manifest directory (multi-document YAML and a JSON List) and exits, the
// rules staying; --chain-prefix KUBE gives kube-proxy's chain names;
// --cleanup removes everything the proxy owns.
func TestOnceAndCleanup(t *testing.T) {
	ns := nstest.NewNamed(t)
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webManifest)
	writeFile(t, dir, "dns.json", dnsManifest)
	for _, prefix := range []string{"PODNET", "KUBE"} {
		if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--backend", "iptables", "--chain-prefix", prefix).CombinedOutput(); err != nil {
			t.Fatalf("--once: %v\n%s", err, out)
		}
		rules := save(t, ns)
		for _, want := range []string{
			"-A " + prefix + "-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j " + prefix + "-SVC-",
			"-A " + prefix + "-NODEPORTS -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 31088 -j " + prefix + "-EXT-",
			"--to-destination 10.200.1.2:8080",
			"--to-destination 10.200.0.5:53",
			"-A PREROUTING -m comment --comment \"podnet service portals\" -j " + prefix + "-SERVICES",
		} {
			if !strings.Contains(rules, want) {
				t.Errorf("prefix %s: no %q in\n%s", prefix, want, rules)
			}
		}
		if prefix == "KUBE" && !strings.Contains(rules, "-j KUBE-SVC-ERIFXISQEP7F7OF4") {
			t.Errorf("no kube-proxy chain name for kube-dns:dns-tcp")
		}
	}
	for _, prefix := range []string{"PODNET", "KUBE"} {
		if out, err := proxyCmd(ns, "--cleanup", "--chain-prefix", prefix).CombinedOutput(); err != nil {
			t.Fatalf("--cleanup: %v\n%s", err, out)
		}
	}
	if rules := save(t, ns); strings.Contains(rules, "-SERVICES") || strings.Contains(rules, "podnet service") || strings.Contains(rules, "-SEP-") {
		t.Errorf("after --cleanup:\n%s", rules)
	}
}

// TestBackends: by default the proxy writes nftables (and says so); a run
// with the other backend removes the first one's rules, and --cleanup
// removes both backends' objects.
func TestBackends(t *testing.T) {
	ns := nstest.NewNamed(t)
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webManifest)
	out, err := proxyCmd(ns, "--manifests", dir, "--once").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "backend nftables") {
		t.Fatalf("--once: %v\n%s", err, out)
	}
	rules := save(t, ns)
	for _, want := range []string{"table ip podnet-proxy {", "10.96.0.20 . tcp . 80", "tcp . 31088", "10.96.0.20 . tcp . 80 . 0x00000000 : 10.200.0.2 . 8080"} {
		if !strings.Contains(rules, want) {
			t.Errorf("nftables: no %q in\n%s", want, rules)
		}
	}
	if strings.Contains(rules, "PODNET-SERVICES") {
		t.Errorf("nftables run wrote iptables chains:\n%s", rules)
	}
	// Switch to iptables: the nftables table goes.
	if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--backend", "iptables").CombinedOutput(); err != nil {
		t.Fatalf("--backend iptables: %v\n%s", err, out)
	}
	rules = save(t, ns)
	if !strings.Contains(rules, "PODNET-SERVICES") || strings.Contains(rules, "podnet-proxy") {
		t.Errorf("after switching to iptables:\n%s", rules)
	}
	// And back: the iptables chains go.
	if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--backend", "nftables").CombinedOutput(); err != nil {
		t.Fatalf("--backend nftables: %v\n%s", err, out)
	}
	rules = save(t, ns)
	if strings.Contains(rules, "PODNET-") || !strings.Contains(rules, "podnet-proxy") {
		t.Errorf("after switching back to nftables:\n%s", rules)
	}
	// Both at once (a proxy of each prefix), then --cleanup of each prefix.
	if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--backend", "iptables", "--chain-prefix", "KUBE").CombinedOutput(); err != nil {
		t.Fatalf("KUBE iptables: %v\n%s", err, out)
	}
	for _, prefix := range []string{"PODNET", "KUBE"} {
		if out, err := proxyCmd(ns, "--cleanup", "--chain-prefix", prefix).CombinedOutput(); err != nil {
			t.Fatalf("--cleanup: %v\n%s", err, out)
		}
	}
	if rules := save(t, ns); strings.Contains(rules, "podnet-proxy") || strings.Contains(rules, "KUBE-") || strings.Contains(rules, "PODNET-") {
		t.Errorf("after --cleanup:\n%s", rules)
	}
	if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--backend", "ebpf").CombinedOutput(); err == nil || !strings.Contains(string(out), `--backend \"ebpf\": want nftables or iptables`) {
		t.Errorf("bad --backend: %v\n%s", err, out)
	}
}

// TestNodePortAddressesFlag: --nodeport-addresses becomes the node's
// addresses in those CIDRs (the proxy's nodeport-ips), and CIDRs that
// match none of them are refused before anything is written.
func TestNodePortAddressesFlag(t *testing.T) {
	ns := nstest.NewNamed(t)
	if err := addr.Ensure(ns, "lo", netip.MustParsePrefix("192.0.2.1/32")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webManifest)
	if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--nodeport-addresses", "192.0.2.0/24,10.0.0.0/8").CombinedOutput(); err != nil {
		t.Fatalf("--nodeport-addresses: %v\n%s", err, out)
	}
	if rules := save(t, ns); !strings.Contains(rules, "set nodeport-ips {") || !strings.Contains(rules, "elements = { 192.0.2.1 }") {
		t.Errorf("no nodeport-ips element 192.0.2.1 in\n%s", rules)
	}
	out, err := proxyCmd(ns, "--manifests", dir, "--once", "--nodeport-addresses", "198.51.100.0/24").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no address of this node lies in 198.51.100.0/24") {
		t.Errorf("CIDR without addresses: %v\n%s", err, out)
	}
}

// TestBadManifest: a bad object is reported with its file and name, and
// --once fails without writing anything.
func TestBadManifest(t *testing.T) {
	ns := nstest.NewNamed(t)
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webManifest)
	writeFile(t, dir, "bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\nspec:\n  clusterIP: 10.96.0.99\n  ports: [{port: 0}]\n")
	out, err := proxyCmd(ns, "--manifests", dir, "--once").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.yaml: document 1: Service shop/broken") || !strings.Contains(string(out), "port 0") {
		t.Errorf("err %v, output:\n%s", err, out)
	}
	if rules := save(t, ns); strings.Contains(rules, "10.96.0.20") {
		t.Errorf("rules written despite the bad manifest:\n%s", rules)
	}
}

// TestDaemon runs the proxy inside a namespace with metrics: it follows
// manifest changes, keeps the last good rules when a manifest turns bad,
// reports itself healthy, and leaves the rules in place when stopped.
func TestDaemon(t *testing.T) {
	ns := nstest.NewNamed(t)
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webManifest)
	var stderr syncBuffer
	cmd, done := startDaemon(t, ns, &stderr,
		"--netns", ns.Path(), "--node-name", "node0", "--manifests", dir, "--metrics-addr", "127.0.0.1:9101", "--healthz-addr", "127.0.0.1:9102", "--poll", "50ms")
	get := httpGetIn(ns, "http://127.0.0.1:9101")
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		waitUntil(t, &stderr, what, ok)
	}
	waitFor("healthz", func() bool { code, _ := get("/healthz"); return code == 200 })
	// Healthy from the start (nothing waits yet); the first sync follows.
	waitFor("the first sync in the metrics", func() bool {
		_, m := get("/metrics")
		return strings.Contains(m, "kubeproxy_sync_proxy_rules_duration_seconds_count 1\n")
	})
	_, metrics := get("/metrics")
	for _, want := range []string{"podnet_service_proxy_services 1\n", "podnet_service_proxy_endpoints 2\n", "podnet_service_proxy_full_syncs_total 1\n", "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram", "kubeproxy_sync_proxy_rules_duration_seconds_count 1\n"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
	}
	checkKubeProxyURLs(t, ns, get)
	writeFile(t, dir, "dns.json", dnsManifest)
	waitFor("the dns Service's rules", func() bool { return hasClusterIP(save(t, ns), "10.96.0.10") })
	writeFile(t, dir, "web.yaml", strings.Replace(webManifest, "port: 80,", "port: 70000,", 1))
	waitFor("the manifest error", func() bool {
		_, m := get("/metrics")
		return strings.Contains(m, "podnet_service_proxy_rejected_total 1\n")
	})
	if rules := save(t, ns); !hasClusterIP(rules, "10.96.0.20") || !hasClusterIP(rules, "10.96.0.10") {
		t.Errorf("last good rules not kept:\n%s", rules)
	}
	if !strings.Contains(stderr.String(), "web.yaml: document 1: Service default/web") {
		t.Errorf("log does not name the bad object:\n%s", stderr.String())
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("healthz %d after a manifest error (syncs still succeed)", code)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Errorf("exit: %v\n%s", err, stderr.String())
	}
	if !hasClusterIP(save(t, ns), "10.96.0.20") {
		t.Error("rules removed on stop")
	}
}

// checkKubeProxyURLs: kube-proxy's /proxyMode names the backend (nftables,
// the default on this kernel), and the health port answers /healthz and
// /livez, as the e2e "should check kube-proxy urls" asks of them.
func checkKubeProxyURLs(t *testing.T, ns *netns.NS, get func(string) (int, string)) {
	t.Helper()
	if code, body := get("/proxyMode"); code != 200 || body != "nftables" {
		t.Errorf("/proxyMode: %d %q, want 200 \"nftables\"", code, body)
	}
	health := httpGetIn(ns, "http://127.0.0.1:9102")
	for _, path := range []string{"/healthz", "/livez"} {
		if code, _ := health(path); code != 200 {
			t.Errorf("health port %s: %d, want 200", path, code)
		}
	}
	if code, _ := health("/metrics"); code != 404 {
		t.Errorf("health port /metrics: %d, want 404 (metrics stay on their own address)", code)
	}
}

// startDaemon starts podnet-service-proxy with args inside ns, its stderr
// going to stderr. done receives its exit; the test's cleanup kills it if
// it is still running.
func startDaemon(t *testing.T, ns *netns.NS, stderr io.Writer, args ...string) (cmd *exec.Cmd, done <-chan error) {
	t.Helper()
	cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name(), filepath.Join(binDir, "podnet-service-proxy")}, args...)...)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	return cmd, exited
}

// httpGetIn returns a function that GETs base+path from inside ns and
// returns the status code and body, or 0 and the error.
func httpGetIn(ns *netns.NS, base string) func(path string) (int, string) {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}
	return func(path string) (int, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

// waitUntil polls ok for up to 10 s, failing the test with the proxy's log
// when it never holds.
func waitUntil(t *testing.T, log *syncBuffer, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; proxy log:\n%s", what, log.String())
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// syncBuffer is a bytes.Buffer the process's output goroutine and the
// test may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConntrackTimeouts: the proxy sets kube-proxy's conntrack timeouts
// for TCP (24 h established, 1 h CLOSE_WAIT) in its namespace at start;
// 0 leaves one alone; --conntrack-only sets them and writes no rule; a
// timeout under a second is refused before anything changes.
func TestConntrackTimeouts(t *testing.T) {
	const est, cw = "net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_close_wait"
	get := func(ns *netns.NS, key string) string {
		v, err := sysctl.Get(ns, key)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", webManifest)

	ns := nstest.NewNamed(t)
	if out, err := proxyCmd(ns, "--manifests", dir, "--conntrack-only").CombinedOutput(); err != nil {
		t.Fatalf("--conntrack-only: %v\n%s", err, out)
	}
	if e, c := get(ns, est), get(ns, cw); e != "86400" || c != "3600" {
		t.Errorf("after --conntrack-only: established %s, close-wait %s; want 86400 and 3600", e, c)
	}
	if rules := save(t, ns); strings.Contains(rules, "10.96.0.20") {
		t.Errorf("--conntrack-only wrote rules:\n%s", rules)
	}

	ns = nstest.NewNamed(t)
	before := get(ns, est)
	if out, err := proxyCmd(ns, "--manifests", dir, "--once", "--conntrack-tcp-timeout-established", "0", "--conntrack-tcp-timeout-close-wait", "90s").CombinedOutput(); err != nil {
		t.Fatalf("--once: %v\n%s", err, out)
	}
	if e, c := get(ns, est), get(ns, cw); e != before || c != "90" {
		t.Errorf("established %s (was %s, flag 0), close-wait %s (flag 90s)", e, before, c)
	}

	ns = nstest.NewNamed(t)
	before = get(ns, cw)
	out, err := proxyCmd(ns, "--manifests", dir, "--once", "--conntrack-tcp-timeout-close-wait", "10ms").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "at least a second") || get(ns, cw) != before {
		t.Errorf("timeout of 10ms: %v\n%s", err, out)
	}
	if rules := save(t, ns); strings.Contains(rules, "10.96.0.20") {
		t.Errorf("rules written despite the bad flag:\n%s", rules)
	}
}
