package kubetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podnet/podnet/internal/testenv/refbin"
)

// Environment variables naming the binaries, before the defaults.
const (
	APIServerEnv = "PODNET_KUBE_APISERVER"
	EtcdEnv      = "PODNET_ETCD"
)

// AdminUser is the user the ControlPlane's config and kubeconfig
// authenticate as; it is in group system:masters, which RBAC lets do
// anything.
const AdminUser = "podnet-admin"

// ErrNotInstalled is wrapped by Start's error when a binary is missing.
var ErrNotInstalled = errors.New("not installed")

// Options configure Start. The zero value is ready to use.
type Options struct {
	// APIServer is the kube-apiserver binary. Default: $PODNET_KUBE_APISERVER,
	// then .refbin/kube-apiserver (make deps builds it), then $PATH.
	APIServer string
	// Etcd is the etcd binary. Default: $PODNET_ETCD, then $PATH.
	Etcd string
	// ServiceClusterIPRange is the API server's --service-cluster-ip-range.
	// Default 10.96.0.0/16.
	ServiceClusterIPRange string
	// Dir is where the state directory (etcd's data, certificates, token
	// file, kubeconfig, logs) is made. Default: /dev/shm when it is there,
	// so etcd's fsyncs cost nothing, else os.TempDir().
	Dir string
	// Log receives both processes' output. Default: a log file per process
	// in the state directory, whose last lines errors quote.
	Log io.Writer
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// Config reaches the API server as AdminUser.
	Config *rest.Config
	// Kubeconfig is a kubeconfig file with the same cluster and user, for
	// programs run as separate processes.
	Kubeconfig string
	// EtcdURL is etcd's client URL (http://127.0.0.1:PORT).
	EtcdURL string

	dir      string
	apiArgs  []string
	apiBin   string
	log      io.Writer
	mu       sync.Mutex
	etcd     *process
	api      *process
	httpc    *http.Client // etcd
	apiHTTP  *http.Client // the API server, trusting its certificate
	stopOnce sync.Once
}

// Start starts etcd and kube-apiserver and returns when the API server
// answers /readyz, or ctx ends (without a deadline, Start allows two
// minutes). On error nothing is left running and the state directory is
// removed.
func Start(ctx context.Context, o Options) (_ *ControlPlane, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	apiBin, err := findBinary(o.APIServer, APIServerEnv, filepath.Join(refbin.Dir(), "kube-apiserver"), "kube-apiserver")
	if err != nil {
		return nil, err
	}
	etcdBin, err := findBinary(o.Etcd, EtcdEnv, "", "etcd")
	if err != nil {
		return nil, err
	}
	if o.ServiceClusterIPRange == "" {
		o.ServiceClusterIPRange = "10.96.0.0/16"
	}
	dir, err := os.MkdirTemp(stateParent(o.Dir), "podnet-kubetest-")
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{dir: dir, apiBin: apiBin, log: o.Log}
	defer func() {
		if err != nil {
			_ = cp.Stop()
		}
	}()

	creds, err := writeCredentials(dir)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	if err := cp.startEtcd(ctx, etcdBin, ports[0], ports[1]); err != nil {
		return nil, err
	}
	cp.configureAPIServer(creds, ports[2], o.ServiceClusterIPRange)
	if err := cp.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := cp.writeKubeconfig(creds); err != nil {
		return nil, err
	}
	return cp, nil
}

// stateParent is where the state directory is made: dir if set, else
// /dev/shm when it is there, else os.TempDir().
func stateParent(dir string) string {
	if dir != "" {
		return dir
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// startEtcd starts etcd serving clients on clientPort and peers on
// peerPort, and waits until it is healthy.
func (cp *ControlPlane) startEtcd(ctx context.Context, bin string, clientPort, peerPort int) (err error) {
	clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	cp.EtcdURL = clientURL
	cp.httpc = &http.Client{Timeout: 5 * time.Second}
	cp.etcd, err = cp.spawn("etcd", bin,
		"--name", "podnet",
		"--data-dir", filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "podnet="+peerURL,
		"--log-level", "warn")
	if err != nil {
		return err
	}
	return cp.wait(ctx, cp.etcd, clientURL+"/health", cp.httpc, "")
}

// configureAPIServer sets the API server's arguments (on port, with etcd
// at cp.EtcdURL) and the clients that reach it with creds; StartAPIServer
// then runs it.
func (cp *ControlPlane) configureAPIServer(creds credentials, port int, serviceRange string) {
	cp.apiArgs = []string{
		"--etcd-servers", cp.EtcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(port),
		"--cert-dir", filepath.Join(cp.dir, "certs"),
		"--tls-cert-file", creds.cert, "--tls-private-key-file", creds.key,
		"--token-auth-file", creds.tokens,
		"--authorization-mode", "RBAC",
		"--service-account-key-file", creds.saKey,
		"--service-account-signing-key-file", creds.saKey,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range", serviceRange,
		// The kubernetes Service's endpoints would be 127.0.0.1, which
		// EndpointSlice validation rejects; nothing here needs them.
		"--endpoint-reconciler-type", "none",
		"--allow-privileged",
		"--profiling=false",
	}
	cp.Config = &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(port),
		BearerToken:     creds.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: creds.certPEM},
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(creds.certPEM)
	cp.apiHTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// writeKubeconfig writes cp.Kubeconfig, reaching cp.Config's host as
// AdminUser.
func (cp *ControlPlane) writeKubeconfig(creds credentials) error {
	cp.Kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["podnet"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: creds.certPEM}
	kc.AuthInfos[AdminUser] = &clientcmdapi.AuthInfo{Token: creds.token}
	kc.Contexts["podnet"] = &clientcmdapi.Context{Cluster: "podnet", AuthInfo: AdminUser}
	kc.CurrentContext = "podnet"
	return clientcmd.WriteToFile(*kc, cp.Kubeconfig)
}

// Client returns a clientset for Config with client-side rate limits
// raised (QPS 1000, burst 2000), so tests that load many objects are not
// throttled by client-go's defaults (5 and 10).
func (cp *ControlPlane) Client() (*kubernetes.Clientset, error) {
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 1000, 2000
	return kubernetes.NewForConfig(cfg)
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL after 10 s),
// leaving etcd running: clients see their watches break and requests
// refused until StartAPIServer.
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	p := cp.api
	cp.api = nil
	cp.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop()
}

// StartAPIServer starts kube-apiserver again, on the same address with the
// same credentials, and waits for /readyz. It does nothing when the API
// server is running.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.api != nil {
		return nil
	}
	p, err := cp.spawn("kube-apiserver", cp.apiBin, cp.apiArgs...)
	if err != nil {
		return err
	}
	if err := cp.wait(ctx, p, cp.Config.Host+"/readyz", cp.apiHTTP, cp.Config.BearerToken); err != nil {
		_ = p.stop()
		return err
	}
	cp.api = p
	return nil
}

// CompactEtcd compacts etcd's history up to its current revision, so a
// watch resuming from an older resourceVersion gets 410 Gone.
//
// Equivalent to: etcdctl compaction --physical $(current revision)
func (cp *ControlPlane) CompactEtcd(ctx context.Context) error {
	var rng struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	// Any range answers with the store's revision in its header.
	if err := cp.etcdCall(ctx, "/v3/kv/range", map[string]any{"key": []byte("podnet-kubetest"), "count_only": true}, &rng); err != nil {
		return err
	}
	if rng.Header.Revision == "" {
		return errors.New("kubetest: etcd's range answer has no revision")
	}
	return cp.etcdCall(ctx, "/v3/kv/compaction", map[string]any{"revision": rng.Header.Revision, "physical": true}, nil)
}

func (cp *ControlPlane) etcdCall(ctx context.Context, path string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cp.EtcdURL+path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	resp, err := cp.httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kubetest: etcd %s: %s: %s", path, resp.Status, bytes.TrimSpace(reply))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(reply, out)
}

// Stop stops kube-apiserver and etcd and removes the state directory.
// It is safe to call more than once.
func (cp *ControlPlane) Stop() error {
	var errs []error
	cp.stopOnce.Do(func() {
		errs = append(errs, cp.StopAPIServer())
		if cp.etcd != nil {
			errs = append(errs, cp.etcd.stop())
		}
		errs = append(errs, os.RemoveAll(cp.dir))
	})
	return errors.Join(errs...)
}

// spawn starts one process with its output to cp.log or to a log file in
// the state directory.
func (cp *ControlPlane) spawn(name, bin string, args ...string) (*process, error) {
	out, logPath := cp.log, ""
	if out == nil {
		logPath = filepath.Join(cp.dir, name+".log")
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		out = f
	}
	return startProcess(name, bin, args, out, logPath)
}

// wait polls url until it answers 200, the process exits, or ctx ends.
func (cp *ControlPlane) wait(ctx context.Context, p *process, url string, c *http.Client, token string) error {
	last := "no answer yet"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if resp, err := c.Do(req); err != nil {
			last = err.Error()
		} else {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status + ": " + lastLines(string(body), 5)
		}
		select {
		case <-p.done:
			return fmt.Errorf("kubetest: %s exited before %s answered (%v)%s", p.name, url, p.err, p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("kubetest: %s did not answer %s: %w; last: %s%s", p.name, url, ctx.Err(), last, p.logTail())
		case <-tick.C:
		}
	}
}

// findBinary resolves a binary: explicit path, environment variable, a
// default path, then $PATH.
func findBinary(explicit, env, def, name string) (string, error) {
	for _, p := range []string{explicit, os.Getenv(env), def} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if p == explicit || p == os.Getenv(env) {
			return "", fmt.Errorf("kubetest: %s %s: %w", name, p, ErrNotInstalled)
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("kubetest: %s not found (set %s, or run make deps): %w", name, env, ErrNotInstalled)
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
