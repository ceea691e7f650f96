// Package refbin finds the pinned reference programs (the containernetworking
// plugins and cnitool) that tests and benchmarks run side by side with
// podnet's own. `make deps` installs them into .refbin/ at the repository
// root; PODNET_REFBIN overrides that directory.
package refbin

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Pinned versions; keep in step with the Makefile.
const (
	PluginsVersion = "v1.10.0" // github.com/containernetworking/plugins
	CNIToolVersion = "v1.3.0"  // github.com/containernetworking/cni/cnitool
)

// Dir returns the directory holding the reference binaries.
func Dir() string {
	if d := os.Getenv("PODNET_REFBIN"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	// internal/testenv/refbin/refbin.go → repository root
	return filepath.Join(filepath.Dir(file), "..", "..", "..", ".refbin")
}

// Path returns the path of the reference binary name (e.g. "host-local",
// "bridge", "portmap", "cnitool"). When it is missing the test is skipped, or
// fails when PODNET_REQUIRE_PRIVILEGED=1 (make test installs them first).
func Path(tb testing.TB, name string) string {
	tb.Helper()
	p := filepath.Join(Dir(), name)
	if _, err := os.Stat(p); err != nil {
		msg := "reference binary " + name + " not installed in " + Dir() + " (run make deps)"
		if os.Getenv("PODNET_REQUIRE_PRIVILEGED") == "1" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return p
}
