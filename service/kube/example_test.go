package kube_test

import (
	"context"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/service/kube"
)

// A service proxy for one node: the API server's Services and
// EndpointSlices, followed by informers, become nftables rules in the
// node's namespace until SIGINT or SIGTERM. The rules stay in force when
// it stops. It needs root and a cluster, so it is compiled, not run.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg, err := clientcmd.BuildConfigFromFlags("", "/etc/kubernetes/proxy.kubeconfig")
	if err != nil {
		log.Fatal(err)
	}
	kube.LogUnreachable(cfg, logger, 30*time.Second) // informers retry silently otherwise
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatal(err)
	}

	ns, err := netns.Current() // a proxy in a host-network pod programs the node itself
	if err != nil {
		log.Fatal(err)
	}
	defer ns.Close()
	proxy, err := service.New(service.Config{
		Backend:      service.Nftables(ns), // or service.IPTables(iptables.NewKernel(ns))
		NodeName:     "node0",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16")},
		Logger:       logger,
	})
	if err != nil {
		log.Fatal(err)
	}

	src, err := kube.New(kube.Config{Client: client, Proxy: proxy, Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	// Start returns once the proxy holds every Service and its endpoints, so
	// the first sync does not remove the rules of Services not yet read.
	if err := src.Start(ctx); err != nil {
		log.Fatal(err) // only when ctx ended first
	}
	if err := proxy.Run(ctx, service.RunConfig{MinSyncPeriod: time.Second}); err != nil {
		log.Fatal(err)
	}
}
