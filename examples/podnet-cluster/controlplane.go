package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/service"
)

// cpOptions are the flags of the --control-plane mode: the cluster runs on
// etcd and kube-apiserver, with podnet-agent and podnet-service-proxy on
// every worker.
type cpOptions struct {
	enabled         bool
	apiServer, etcd string // "" lets kubetest find them
	// goal is the time within which an EndpointSlice change must move
	// traffic; 0 checks only that it does (tests assert no timings).
	goal time.Duration
}

// kubeCluster is what the control-plane mode adds to a cluster.
type kubeCluster struct {
	cp      *kubetest.ControlPlane
	client  kubernetes.Interface
	agents  map[string]*daemon // by worker name
	proxies map[string]*daemon
	metrics map[string]string // proxy metrics address (host:port) by worker
	bins    struct{ agent, proxy string }
	started time.Duration // how long the control plane took to start
	changes []change      // the demo's own measurement of each EndpointSlice write
	writes  int           // EndpointSlice writes, each one a trigger every proxy records
}

// change is one EndpointSlice write and the time from the write to the
// first answer that showed it.
type change struct {
	what string
	took time.Duration
}

const (
	agentConflist = "10-podnet.conflist" // what podnet-agent writes into --cni-conf-dir
	proxySync     = "5s"                 // the proxies' --sync-period: several resyncs while the API server is away
	agentResync   = "2s"                 // the agents' --resync-period
)

// agentResyncPeriod is agentResync as a duration.
var agentResyncPeriod, _ = time.ParseDuration(agentResync)

// controlPlaneSteps are the building steps of the --control-plane mode:
// the API server holds the Nodes, Services and EndpointSlices; each worker's
// agent writes its CNI configuration, routes and masquerade, and its proxy
// the Service rules.
func (c *cluster) controlPlaneSteps(ctx context.Context) []step {
	return []step{
		{"switch, outside host and worker namespaces on 10.240.0.0/24", c.build},
		{"control plane: etcd and kube-apiserver (kubetest)", func() error { return c.startControlPlane(ctx) }},
		{"pod CIDRs carved from 10.200.0.0/16 (ipam.NodeSubnets)", c.assignPodCIDRs},
		{"Nodes registered: InternalIP 10.240.0.2N, spec.podCIDRs", func() error { return c.registerNodes(ctx) }},
		{"podnet-agent and podnet-service-proxy on every worker: conflists written, NetworkUnavailable=False", func() error { return c.startDaemons(ctx) }},
		{fmt.Sprintf("%d pods attached by podnet-bridge + portmap through libcni, from the agents' conflists", c.cfg.nodes*c.cfg.podsPerNode), func() error { return c.addPods(ctx) }},
		{"outside host: routes to the pod CIDRs (the VPC router)", c.routeOutside},
		{"Services and EndpointSlices created through the API, answered on every worker", func() error { return c.createServices(ctx) }},
	}
}

func (c *cluster) startControlPlane(ctx context.Context) error {
	dir := filepath.Join(stateDir, "control-plane")
	for _, d := range []string{dir, filepath.Join(stateDir, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	log, err := os.OpenFile(filepath.Join(stateDir, "logs", "control-plane.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	c.kube = &kubeCluster{agents: map[string]*daemon{}, proxies: map[string]*daemon{}, metrics: map[string]string{}}
	t := time.Now()
	cp, err := kubetest.Start(ctx, kubetest.Options{
		APIServer: c.cfg.cp.apiServer, Etcd: c.cfg.cp.etcd,
		ServiceClusterIPRange: c.cfg.serviceCIDR.String(),
		Dir:                   dir, Log: log,
	})
	if err != nil {
		return err
	}
	c.kube.cp = cp
	c.kube.started = time.Since(t)
	c.kube.client, err = cp.Client()
	return err
}

func (c *cluster) registerNodes(ctx context.Context) error {
	for _, w := range c.workers {
		if err := registerNode(ctx, c.kube.client, w); err != nil {
			return err
		}
	}
	return nil
}

// startDaemons runs podnet-agent and podnet-service-proxy for every worker
// and waits until every agent has written its conflist and marked its Node
// ready, and every proxy serves its metrics.
func (c *cluster) startDaemons(ctx context.Context) error {
	k := c.kube
	var err error
	if k.bins.agent, err = findProgram(c.cfg.cniPath, "podnet-agent"); err != nil {
		return err
	}
	if k.bins.proxy, err = findProgram(c.cfg.cniPath, "podnet-service-proxy"); err != nil {
		return err
	}
	for _, w := range c.workers {
		w.confDir = filepath.Join(stateDir, "cni-conf", w.name)
		common := []string{"--kubeconfig", k.cp.Kubeconfig, "--node-name", w.name, "--netns", w.ns.Path()}
		a, err := c.startDaemon("podnet-agent on "+w.name, k.bins.agent, append(common,
			"--cni-conf-dir", w.confDir, "--cluster-cidr", c.cfg.clusterCIDR.String(), "--bridge", "cnio0",
			"--resync-period", agentResync, "--ipam-data-dir", w.dataDir)...)
		if err != nil {
			return err
		}
		k.agents[w.name] = a
		p, err := c.startDaemon("podnet-service-proxy on "+w.name, k.bins.proxy, append(common,
			"--cluster-cidr", c.cfg.clusterCIDR.String(), "--min-sync-period", "0", "--sync-period", proxySync,
			"--metrics-addr", "127.0.0.1:0")...)
		if err != nil {
			return err
		}
		k.proxies[w.name] = p
	}
	for _, w := range c.workers {
		if err := c.waitAgent(ctx, w); err != nil {
			return err
		}
		if err := c.waitMetrics(ctx, w); err != nil {
			return err
		}
	}
	return nil
}

// waitAgent waits until w's agent has written its conflist and set
// NetworkUnavailable=False on w's Node, then loads the conflist.
func (c *cluster) waitAgent(ctx context.Context, w *worker) error {
	a := c.kube.agents[w.name]
	file := filepath.Join(w.confDir, agentConflist)
	err := poll(ctx, 30*time.Second, func() (bool, error) {
		if err := a.exited(); err != nil {
			return false, err
		}
		if _, err := os.Stat(file); err != nil {
			return false, nil
		}
		cond, err := networkReady(ctx, c.kube.client, w.name)
		return cond != nil, err
	})
	if err != nil {
		return fmt.Errorf("%s: %w; the end of its log:\n%s", a.name, err, a.tail(10))
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	w.conflist, err = libcni.ConfListFromBytes(b)
	return err
}

// waitMetrics waits for w's proxy to serve its metrics and notes where: it
// listens on a free loopback port and logs it.
func (c *cluster) waitMetrics(ctx context.Context, w *worker) error {
	p := c.kube.proxies[w.name]
	err := poll(ctx, 30*time.Second, func() (bool, error) {
		if err := p.exited(); err != nil {
			return false, err
		}
		line, ok := p.logLine("serving metrics", "addr=")
		if !ok {
			return false, nil
		}
		_, a, _ := strings.Cut(line, "addr=")
		a, _, _ = strings.Cut(a, " ")
		if _, err := netip.ParseAddrPort(a); err != nil {
			return false, fmt.Errorf("metrics address in %q: %w", line, err)
		}
		c.kube.metrics[w.name] = a
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w; the end of its log:\n%s", p.name, err, p.tail(10))
	}
	return nil
}

// createServices creates the Services and their EndpointSlices through the
// API and measures how long each takes to answer on worker-0; then waits
// until each answers on every worker.
func (c *cluster) createServices(ctx context.Context) error {
	servers, err := c.serveBackends()
	if err != nil {
		return err
	}
	defer closeAll(servers)
	client := c.workers[0].pods[0]
	for _, s := range c.services() {
		if err := createService(ctx, c.kube.client, s); err != nil {
			return err
		}
		at, err := c.writeSlice(ctx, s)
		if err != nil {
			return err
		}
		dst := firstTCP(s)
		backends := endpointNames(c, s)
		took, _, err := firstAnswer(client.ns, dst, at, 10*time.Second, func(r probe.Reply) bool { return backends[r.Name] })
		if err != nil {
			return fmt.Errorf("%s on %s: %w", s.Name, client.name, err)
		}
		c.kube.changes = append(c.kube.changes, change{s.Name.String() + " created", took})
	}
	for _, w := range c.workers {
		for _, s := range c.services() {
			if _, err := probe.Poll(w.pods[0].ns, "tcp", firstTCP(s), 10*time.Second); err != nil {
				return fmt.Errorf("%s on %s: %w", s.Name, w.name, err)
			}
		}
	}
	return nil
}

// writeSlice writes s's endpoints through the API and counts the write.
func (c *cluster) writeSlice(ctx context.Context, s service.Service) (time.Time, error) {
	at, err := writeEndpoints(ctx, c.kube.client, s)
	if err == nil {
		c.kube.writes++
	}
	return at, err
}

// serveBackends starts the probe servers of the Services' backends: the
// kube-dns pods on port 53 and the nginx pod on port 80.
func (c *cluster) serveBackends() ([]*probe.Server, error) {
	var out []*probe.Server
	serve := func(p *pod, port uint16) error {
		s, err := probe.Serve(p.ns, netip.AddrPortFrom(p.ip, port), p.name)
		if err == nil {
			out = append(out, s)
		}
		return err
	}
	for _, p := range c.dnsBackends() {
		if err := serve(p, 53); err != nil {
			closeAll(out)
			return nil, err
		}
	}
	if err := serve(c.nginxBackend(), 80); err != nil {
		closeAll(out)
		return nil, err
	}
	return out, nil
}

func closeAll(servers []*probe.Server) {
	for _, s := range servers {
		s.Close()
	}
}

// firstTCP is the cluster IP and port of s's first TCP port.
func firstTCP(s service.Service) netip.AddrPort {
	for _, p := range s.Ports {
		if protocolOf(p) == service.TCP {
			return netip.AddrPortFrom(s.ClusterIPs[0], p.Port)
		}
	}
	return netip.AddrPort{}
}

// endpointNames is the set of pod names behind s's endpoints.
func endpointNames(c *cluster, s service.Service) map[string]bool {
	names := map[string]bool{}
	for _, e := range s.Endpoints {
		for _, w := range c.workers {
			for _, p := range w.pods {
				if p.ip == e.Addr {
					names[p.name] = true
				}
			}
		}
	}
	return names
}

// firstAnswer asks dst from ns over TCP every 10 ms until an answer
// satisfies ok, and returns how long after since that answer came.
func firstAnswer(ns *netns.NS, dst netip.AddrPort, since time.Time, total time.Duration, ok func(probe.Reply) bool) (time.Duration, probe.Reply, error) {
	deadline := time.Now().Add(total)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last probe.Reply
	var lastErr error
	for {
		r, err := probe.Ask(ns, "tcp", dst, 200*time.Millisecond)
		if err == nil && ok(r) {
			return time.Since(since), r, nil
		}
		if err == nil {
			last, lastErr = r, fmt.Errorf("answered by %s", r.Name)
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			return 0, last, fmt.Errorf("no expected answer from %s within %v (last: %v)", dst, total, lastErr)
		}
		<-tick.C // polling interval
	}
}

// poll calls f every 20 ms until it reports done or fails, or total has
// passed.
func poll(ctx context.Context, total time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(total)
	for {
		done, err := f()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done within %v", total)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling interval
		}
	}
}

// stopKube stops the proxies and agents (SIGTERM) and the control plane.
// Their rules, routes and files live in the worker namespaces and the
// state directory, which the teardown removes next, so no --cleanup run
// is needed.
func (c *cluster) stopKube() {
	for _, d := range c.daemons {
		d.stop()
	}
	if c.kube != nil && c.kube.cp != nil {
		if err := c.kube.cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "podnet-cluster: stop the control plane:", err)
		}
	}
}

// describeKube prints what the control-plane mode runs.
func (c *cluster) describeKube() {
	k := c.kube
	fmt.Printf("control plane: etcd + kube-apiserver, up in %v; kubeconfig %s\n", k.started.Round(time.Millisecond), k.cp.Kubeconfig)
	for _, w := range c.workers {
		fmt.Printf("%-8s podnet-agent pid %d (conflist %s), podnet-service-proxy pid %d (metrics http://%s/metrics)\n", w.name,
			k.agents[w.name].cmd.Process.Pid, filepath.Join(w.confDir, agentConflist), k.proxies[w.name].cmd.Process.Pid, k.metrics[w.name])
	}
}
