package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
)

// proxyKind is one proxy to measure.
type proxyKind struct {
	name, bin string
	kubeMode  string // kube-proxy's --proxy-mode; "" for podnet-service-proxy
	backend   string // podnet-service-proxy's --backend
}

// running is a proxy process in its own throwaway namespace, with its
// metrics on the namespace's loopback.
type running struct {
	kind proxyKind
	ns   *netns.NS
	fwd  *forwarder
	cmd  *exec.Cmd
	addr string
	log  *os.File
	done chan struct{}
	http *http.Client
}

// start runs the proxy in a new namespace whose loopback carries
// connections to apiAddr (host:port) on to the API server.
func (k proxyKind) start(kubeconfig, apiAddr string) (*running, error) {
	ns, err := netns.New()
	if err != nil {
		return nil, err
	}
	if err := link.SetUp(ns, "lo"); err != nil {
		ns.Close()
		return nil, err
	}
	fwd, err := forward(ns, apiAddr)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("forward %s into the proxy's namespace: %w", apiAddr, err)
	}
	const addr = "127.0.0.1:10249"
	var cmd *exec.Cmd
	if k.kubeMode == "" {
		cmd = exec.Command("nsenter", "--net="+ns.Path(), k.bin, "--kubeconfig", kubeconfig, "--node-name", "node0",
			"--cluster-cidr", "10.200.0.0/16", "--min-sync-period", "0", "--metrics-addr", addr, "--backend", k.backend)
	} else {
		cmd = exec.Command("nsenter", "--net="+ns.Path(), k.bin, "--kubeconfig", kubeconfig, "--hostname-override", "node0",
			"--proxy-mode", k.kubeMode, "--cluster-cidr", "10.200.0.0/16", "--iptables-min-sync-period", "0",
			"--metrics-bind-address", addr, "--healthz-bind-address", "127.0.0.1:10256",
			// 0 leaves each conntrack sysctl as it is.
			"--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0", "--conntrack-tcp-timeout-close-wait", "0")
	}
	log, err := os.CreateTemp("", "podnet-bench-proxy-*.log")
	if err != nil {
		fwd.close()
		ns.Close()
		return nil, err
	}
	os.Remove(log.Name()) // kept open for logTail; gone when closed
	cmd.Stdout, cmd.Stderr = log, log
	// Pdeathsig: a proxy must not outlive this program, even killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r := &running{kind: k, ns: ns, fwd: fwd, cmd: cmd, addr: addr, log: log, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child ends:
		// this goroutine keeps its thread until the child has exited.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(r.done)
	}()
	if err := <-started; err != nil {
		log.Close()
		fwd.close()
		ns.Close()
		return nil, err
	}
	r.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, a)
			return err
		})
		return c, err
	}}}
	return r, nil
}

// stop ends the proxy, with every process of its group, and its
// namespace; the namespace's rules go with it. It fails when a process is
// still in the namespace, which would keep the namespace alive.
func (r *running) stop() error {
	pg := -r.cmd.Process.Pid
	syscall.Kill(pg, syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(pg, syscall.SIGKILL)
		<-r.done
	}
	// Children (iptables-restore, nft) that outlived the proxy.
	if syscall.Kill(pg, 0) == nil {
		syscall.Kill(pg, syscall.SIGKILL)
	}
	// Sockets hold their namespace too: the forwarder's and the scrapes'.
	r.fwd.close()
	r.http.CloseIdleConnections()
	r.log.Close()
	defer r.ns.Close()
	var pids []int
	for range 50 { // up to 5 s for the killed to be reaped
		var err error
		if pids, err = r.ns.PIDs(); err != nil || len(pids) == 0 {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("processes %v still in the namespace of %s", pids, r.kind.name)
}

func (r *running) logTail() string {
	st, err := r.log.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-4000, 0)
	b := make([]byte, st.Size()-off)
	n, _ := r.log.ReadAt(b, off)
	return string(b[:n])
}

// synced reports whether the first full sync of n Services is done.
func (k proxyKind) synced(m metrics, n int) bool {
	if k.kubeMode == "" {
		return m["podnet_service_proxy_services"] >= float64(n)
	}
	return m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 0 &&
		m["kubeproxy_sync_proxy_rules_service_changes_total"] >= float64(n) &&
		m["kubeproxy_sync_proxy_rules_service_changes_pending"] == 0 &&
		m["kubeproxy_sync_proxy_rules_endpoint_changes_pending"] == 0
}

type metrics map[string]float64

// scrape reads the proxy's /metrics: sample (name with labels) -> value.
func (r *running) scrape() (metrics, error) {
	resp, err := r.http.Get("http://" + r.addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		if name, ok := ipv4Sample(line[:i]); ok {
			m[name] = v
		}
	}
	return m, sc.Err()
}

// ipv4Sample names a sample as podnet-service-proxy does, without
// kube-proxy's ip_family label: kube-proxy runs a proxier per family and
// labels their metrics ip_family="IPv4" and "IPv6". Every Service and
// endpoint here is IPv4, so the IPv4 proxier's samples are kept, under the
// name without the label, and the IPv6 one's are dropped.
func ipv4Sample(name string) (string, bool) {
	const label = `ip_family="IPv4"`
	if !strings.Contains(name, "ip_family=") {
		return name, true
	}
	i := strings.Index(name, label)
	if i < 0 {
		return "", false
	}
	rest := name[i+len(label):]
	switch {
	case strings.HasPrefix(rest, ","):
		return name[:i] + rest[1:], true
	case strings.HasSuffix(name[:i], ","):
		return name[:i-1] + rest, true
	case name[i-1] == '{' && rest == "}":
		return name[:i-1], true
	}
	return name[:i] + rest, true
}

// waitFor polls the proxy's metrics until ok holds, the proxy exits, total
// has passed or ctx ends.
func (r *running) waitFor(ctx context.Context, ok func(metrics) bool, total time.Duration) error {
	deadline := time.Now().Add(total)
	for {
		select {
		case <-r.done:
			return fmt.Errorf("proxy exited: %v", r.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if m, err := r.scrape(); err == nil && ok(m) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", total)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// rss returns the proxy's resident set size in KiB (the process nsenter
// became: nsenter execs the proxy).
func (r *running) rss() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return f
		}
	}
	return 0
}
