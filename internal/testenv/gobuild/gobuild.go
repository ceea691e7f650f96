// Package gobuild builds the repository's own programs for tests that run
// them as separate processes, the way a runtime runs a CNI plugin.
package gobuild

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/podnet/podnet/netns/nstest"
)

// Binary builds the main package at pkg (a path relative to the caller's
// package directory, such as "../podnet-bridge") into dir/name and returns
// the binary's path.
func Binary(dir, name, pkg string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Env = os.Environ()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// TestMain builds the main package pkg as dir/name before the tests of m
// run (name is how CNI runtimes find it, e.g. "podnet-bridge"), stores the
// directory in *dir, runs the tests with nstest's leak check, removes the
// directory and exits.
func TestMain(m *testing.M, dir *string, name, pkg string) {
	TestMainRun(m, dir, name, pkg, nstest.Run)
}

// TestMainRun is TestMain with the tests run by run, such as kubetest.Run
// for packages that also share a control plane.
func TestMainRun(m *testing.M, dir *string, name, pkg string, run func(*testing.M) int) {
	d, err := os.MkdirTemp("", "podnet-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := Binary(d, name, pkg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(d)
		os.Exit(1)
	}
	*dir = d
	code := run(m)
	os.RemoveAll(d)
	os.Exit(code)
}
