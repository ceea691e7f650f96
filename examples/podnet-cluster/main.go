// Command podnet-cluster builds a Kubernetes node network out of network
// namespaces on one machine, proves each claim about how pod traffic flows
// (pod to pod on a node and across nodes, masquerade to the outside,
// ClusterIP and NodePort DNAT) with real traffic, prints what it saw, and
// tears it all down.
//
// The topology follows Kubernetes The Hard Way: a node network
// 10.240.0.0/24 joins worker-0 … worker-N-1 (10.240.0.20+N) and an
// outside host through a switch; each worker has POD_CIDR 10.200.N.0/24,
// a cnio0 bridge, and pods attached by the podnet-bridge CNI plugin run
// through libcni as containerd runs it. Routes between nodes are programmed
// with route.Sync (host-gw); Services are programmed by the service
// package on every worker.
//
// It never touches the namespace it is started in. A run that is killed
// leaves a record under /run/podnet-cluster; the next start removes what it
// lists.
//
//	sudo podnet-cluster --cni-path DIR [--nodes 3] [--pods-per-node 10] [--no-masq] [--keep]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	cfg := config{
		nodeNet:     netip.MustParsePrefix("10.240.0.0/24"),
		clusterCIDR: netip.MustParsePrefix("10.200.0.0/16"),
		serviceCIDR: netip.MustParsePrefix("10.32.0.0/24"),
	}
	cniPath := flag.String("cni-path", "", "directories holding podnet-bridge (default: next to this program)")
	flag.IntVar(&cfg.nodes, "nodes", 3, "number of worker nodes (1-50)")
	flag.IntVar(&cfg.podsPerNode, "pods-per-node", 10, "pods per worker (1-200)")
	noMasq := flag.Bool("no-masq", false, `configure the CNI network with "ipMasq": false`)
	flag.BoolVar(&cfg.keep, "keep", false, "leave the cluster running for exploration (with --control-plane: until Ctrl-C)")
	flag.BoolVar(&cfg.cp.enabled, "control-plane", false, "run on etcd + kube-apiserver, with podnet-agent and podnet-service-proxy on every worker\n(found in --cni-path, with the reference portmap: --cni-path bin:.refbin)")
	flag.StringVar(&cfg.cp.apiServer, "kube-apiserver", "", "kube-apiserver binary for --control-plane (default: kubetest's lookup, e.g. .refbin/kube-apiserver from make deps)")
	flag.StringVar(&cfg.cp.etcd, "etcd", "", "etcd binary for --control-plane (default: kubetest's lookup)")
	flag.Parse()
	cfg.masq = !*noMasq
	cfg.cp.goal = time.Second
	if cfg.nodes < 1 || cfg.nodes > 50 || cfg.podsPerNode < 1 || cfg.podsPerNode > 200 {
		fmt.Fprintln(os.Stderr, "podnet-cluster: --nodes must be 1-50 and --pods-per-node 1-200")
		os.Exit(2)
	}
	if *cniPath == "" {
		exe, _ := os.Executable()
		*cniPath = filepath.Dir(exe)
	}
	cfg.cniPath = filepath.SplitList(*cniPath)
	if _, err := os.Stat(filepath.Join(cfg.cniPath[0], "podnet-bridge")); err != nil {
		fmt.Fprintf(os.Stderr, "podnet-cluster: no podnet-bridge in %s (build it: go build -o DIR/podnet-bridge ./examples/podnet-bridge)\n", cfg.cniPath[0])
		os.Exit(2)
	}
	if cfg.cp.enabled {
		for _, name := range []string{"podnet-agent", "podnet-service-proxy", "portmap"} {
			if _, err := findProgram(cfg.cniPath, name); err != nil {
				fmt.Fprintf(os.Stderr, "podnet-cluster: --control-plane: %v (make build puts podnet-* in bin/, make deps portmap in .refbin/: --cni-path bin:.refbin)\n", err)
				os.Exit(2)
			}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "podnet-cluster:", err)
		os.Exit(1)
	}
	if failed > 0 {
		fmt.Printf("\n%d checks FAILED\n", failed)
		os.Exit(1)
	}
	fmt.Println("\nall checks passed")
}

// phase prints how long each step took.
type phases struct{ last time.Time }

func (p *phases) done(what string) {
	now := time.Now()
	fmt.Printf("  [%6.0f ms] %s\n", float64(now.Sub(p.last).Microseconds())/1000, what)
	p.last = now
}

// step is one phase of building the cluster.
type step struct {
	what string
	fn   func() error
}

func run(ctx context.Context, cfg config) (failed int, err error) {
	start := time.Now()
	if n, err := stopLeftoverProcesses(); err != nil {
		return 0, fmt.Errorf("stop the processes of an earlier run: %w", err)
	} else if n > 0 {
		fmt.Printf("stopped %d processes left by an earlier run\n", n)
	}
	if n, err := cleanupLeftovers(); err != nil {
		return 0, fmt.Errorf("remove leftovers of an earlier run: %w", err)
	} else if n > 0 {
		fmt.Printf("removed %d namespaces left by an earlier run\n", n)
	}
	cacheDir := filepath.Join(stateDir, "cni-cache")
	c := &cluster{cfg: cfg, cni: libcni.NewCNIConfigWithCacheDir(cfg.cniPath, cacheDir, nil)}
	torn := false
	teardown := func() {
		if torn || (cfg.keep && !cfg.cp.enabled) {
			return
		}
		torn = true
		t := time.Now()
		c.teardown(context.WithoutCancel(ctx))
		fmt.Printf("\ntorn down in %v: every pod deleted through CNI DEL, every namespace removed\n", time.Since(t).Round(time.Millisecond))
	}
	// Ctrl-C (ctx cancelled) stops at the next step or pod; the deferred
	// teardown then removes everything made so far.
	defer teardown()

	fmt.Printf("# building a %d-node cluster with %d pods per node\n", cfg.nodes, cfg.podsPerNode)
	ph := &phases{last: time.Now()}
	steps := []step{
		{"switch, outside host and worker namespaces on 10.240.0.0/24", c.build},
		{"pod CIDRs carved from 10.200.0.0/16 (ipam.NodeSubnets)", c.assignPodCIDRs},
		{fmt.Sprintf("%d pods attached by podnet-bridge through libcni", cfg.nodes*cfg.podsPerNode), func() error { return c.addPods(ctx) }},
		{"host-gw routes between nodes (route.Sync)", c.routeNodes},
		{"node rules: cluster traffic exempt from masquerade, INVALID dropped", func() error { return c.nodeRules(ctx) }},
		{"Services programmed on every worker", func() error { return c.programServices(ctx) }},
	}
	if cfg.cp.enabled {
		steps = c.controlPlaneSteps(ctx)
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return 0, errors.New("interrupted")
		}
		if err := s.fn(); err != nil {
			return 0, fmt.Errorf("%s: %w", s.what, err)
		}
		ph.done(s.what)
	}
	c.describe()

	fmt.Println("\n# checks")
	r := &report{}
	c.checkVethPath(r)
	c.checkPodToPod(r)
	c.checkMasquerade(ctx, r)
	c.checkServices(ctx, r)
	if cfg.cp.enabled {
		c.checkKube(ctx, r)
	}
	ph.done("checks")
	fmt.Printf("\ncluster built and checked in %v\n", time.Since(start).Round(time.Millisecond))
	if cfg.keep {
		fmt.Println("\nleft running (--keep). Explore with, for example:")
		fmt.Printf("  sudo ip netns exec %s ip addr\n", c.workers[0].pods[0].name)
		fmt.Printf("  sudo ip netns exec worker-0 iptables-save -t nat\n")
		fmt.Printf("  sudo podnet-inspect --node /var/run/netns/worker-0 %s\n", c.workers[0].pods[0].name)
		if cfg.cp.enabled {
			fmt.Printf("  sudo kubectl --kubeconfig %s get nodes,services,endpointslices -A\n", c.kube.cp.Kubeconfig)
			fmt.Println("the control plane, agents and proxies run as long as this program: press Ctrl-C to tear it all down.")
			<-ctx.Done()
			return r.failed, nil
		}
		fmt.Println("remove it by running podnet-cluster again (it removes its leftovers) with --nodes 1 --pods-per-node 1, or ip netns del each one.")
	}
	return r.failed, nil
}

// describe prints the cluster's layout.
func (c *cluster) describe() {
	fmt.Println("\n# the cluster")
	fmt.Printf("outside  %s (stands for the internet; routes to pod CIDRs like the VPC router)\n", c.outIP)
	for _, w := range c.workers {
		first, last := w.pods[0].ip, w.pods[len(w.pods)-1].ip
		fmt.Printf("%-8s %s  POD_CIDR %s  cnio0 %s  pods %s … %s\n", w.name, w.ip, w.podCIDR, nth(w.podCIDR, 1), first, last)
	}
	if c.kube != nil {
		c.describeKube()
	}
}
