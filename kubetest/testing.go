package kubetest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/podnet/podnet/netns/nstest"
)

var shared struct {
	once sync.Once
	mu   sync.Mutex
	cp   *ControlPlane
	err  error
}

// Shared returns the test binary's control plane, started on first use
// with the default Options. When it cannot start, tb is skipped, or fails
// when PODNET_REQUIRE_PRIVILEGED=1. Tests that stop the API server must
// not run in parallel with others using it. Main or Run stops it.
func Shared(tb testing.TB) *ControlPlane {
	tb.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		t := time.Now()
		cp, err := Start(ctx, Options{})
		shared.mu.Lock()
		shared.cp, shared.err = cp, err
		shared.mu.Unlock()
		if err == nil {
			fmt.Fprintf(os.Stderr, "kubetest: control plane up in %v at %s\n", time.Since(t).Round(time.Millisecond), cp.Config.Host)
		}
	})
	if shared.err != nil {
		msg := "no Kubernetes control plane: " + shared.err.Error()
		if os.Getenv(nstest.RequireEnv) == "1" {
			tb.Fatal(msg + "; " + nstest.RequireEnv + "=1 forbids skipping")
		}
		tb.Skip(msg)
	}
	return shared.cp
}

// Main is a TestMain for packages that use Shared: it runs the tests with
// the nstest leak check, stops the shared control plane and exits.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the exit.
func Run(m *testing.M) int {
	code := nstest.Run(m)
	shared.mu.Lock()
	cp := shared.cp
	shared.mu.Unlock()
	if cp != nil {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kubetest: stopping the control plane:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}
