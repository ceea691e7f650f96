package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/podnet/podnet/internal/testenv/gobuild"
	"github.com/podnet/podnet/internal/testenv/refbin"
	"github.com/podnet/podnet/netns/nstest"
)

var pluginDir string

// TestMain builds podnet-bridge, podnet-agent and podnet-service-proxy
// into pluginDir before the tests run.
func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "podnet-test-bin-")
	if err == nil {
		for _, b := range [][2]string{{"podnet-bridge", "../podnet-bridge"}, {"podnet-agent", "../podnet-agent"}, {"podnet-service-proxy", "../podnet-service-proxy"}} {
			if _, err = gobuild.Binary(d, b[0], b[1]); err != nil {
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(d)
		os.Exit(1)
	}
	pluginDir = d
	code := nstest.Run(m)
	os.RemoveAll(d)
	os.Exit(code)
}

func testConfig(masq bool) config {
	return config{
		nodes: 2, podsPerNode: 2, masq: masq,
		cniPath:     []string{pluginDir},
		nodeNet:     netip.MustParsePrefix("10.240.0.0/24"),
		clusterCIDR: netip.MustParsePrefix("10.200.0.0/16"),
		serviceCIDR: netip.MustParsePrefix("10.32.0.0/24"),
	}
}

// TestClusterChecks builds a 2-node cluster and runs every check of the
// demo, with and without masquerade.
func TestClusterChecks(t *testing.T) {
	nstest.Require(t)
	for _, masq := range []bool{true, false} {
		t.Run(fmt.Sprintf("masq=%v", masq), func(t *testing.T) {
			failed, err := run(context.Background(), testConfig(masq))
			if err != nil {
				t.Fatal(err)
			}
			if failed != 0 {
				t.Fatalf("%d checks failed (see the output above)", failed)
			}
			if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
				t.Errorf("%s left behind: %v", stateDir, err)
			}
		})
	}
}

// TestClusterControlPlane runs the demo on a real control plane: etcd and
// kube-apiserver (kubetest), podnet-agent and podnet-service-proxy on
// every worker, pods attached with the agents' conflists and the reference
// portmap, and every check of that mode.
func TestClusterControlPlane(t *testing.T) {
	nstest.Require(t)
	cfg := testConfig(true)
	cfg.cniPath = []string{pluginDir, refbin.Dir()}
	refbin.Path(t, "portmap")
	refbin.Path(t, "kube-apiserver")
	cfg.cp.enabled = true
	failed, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if failed != 0 {
		t.Fatalf("%d checks failed (see the output above)", failed)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", stateDir, err)
	}
}

// TestLeftoversRemoved simulates a crashed run: the next start removes
// what the record lists.
func TestLeftoversRemoved(t *testing.T) {
	nstest.Require(t)
	c := &cluster{cfg: testConfig(true)}
	if _, err := c.newNS("worker-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.newNS("outside"); err != nil {
		t.Fatal(err)
	}
	n, err := cleanupLeftovers()
	if err != nil || n != 2 {
		t.Fatalf("cleanupLeftovers = %d, %v; want 2", n, err)
	}
	if _, err := os.Stat("/var/run/netns/worker-0"); !os.IsNotExist(err) {
		t.Errorf("worker-0 still there: %v", err)
	}
}
