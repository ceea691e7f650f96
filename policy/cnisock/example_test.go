package cnisock_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/policy/cnisock"
)

// agent stands in for policy/kube's Source, which puts the addresses
// into force before it returns.
type agent struct{}

func (agent) AddSandbox(ctx context.Context, r cnisock.Request) error {
	if r.Name != "web-0" {
		return fmt.Errorf("pod %s/%s: %w", r.Namespace, r.Name, cnisock.ErrNotFound)
	}
	fmt.Println("agent: pod", r.Namespace+"/"+r.Name, "has", r.IPs)
	return nil
}

func (agent) DeleteSandbox(ctx context.Context, r cnisock.Request) error { return nil }

// The agent serves the socket; the CNI plugin's ADD sends the pod's
// addresses and learns whether it may return.
func Example() {
	dir, _ := os.MkdirTemp("", "cnisock-example-")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "policy.sock")
	ln, err := cnisock.Listen(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error)
	go func() { served <- (&cnisock.Server{Handler: agent{}}).Serve(ctx, ln) }()

	req := cnisock.Request{Version: cnisock.Version, Op: cnisock.Add, ContainerID: "7f3a",
		Namespace: "shop", Name: "web-0", IPs: []netip.Addr{netip.MustParseAddr("10.244.0.5")}}
	fmt.Println("plugin: ADD may return:", cnisock.Send(ctx, path, req) == nil)
	req.Name = "web-1"
	err = cnisock.Send(ctx, path, req)
	fmt.Println("plugin: ADD fails:", err)

	cancel()
	<-served
	// Output:
	// agent: pod shop/web-0 has [10.244.0.5]
	// plugin: ADD may return: true
	// plugin: ADD fails: network policy agent: pod shop/web-1: not found
}
