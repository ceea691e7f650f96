// Package gobuild builds the repository's own programs for tests that run
// them as separate processes, the way a runtime runs a CNI plugin.
package gobuild

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binary builds the main package at pkg (a path relative to the caller's
// package directory, such as "../bridge-cni") into dir/name and returns
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
