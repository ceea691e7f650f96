package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// installBins runs podnet-agent --install-cni-bin dir srcs...
func installBins(t *testing.T, dir string, srcs ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "podnet-agent"), append([]string{"--install-cni-bin", dir}, srcs...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestInstallCNIBin: the DaemonSet's init step copies the plugins into the
// CNI bin directory with mode 0755, replacing a binary a runtime is
// executing by a new file (the running process keeps the old one),
// leaves no temporary file, and leaves files that are already current
// alone.
func TestInstallCNIBin(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	want := map[string][]byte{
		"podnet-bridge": []byte("#!/bin/sh\necho bridge v2\n"),
		"portmap":       []byte("#!/bin/sh\necho portmap v2\n"),
	}
	var srcs []string
	for name, data := range want {
		must(t, os.WriteFile(filepath.Join(src, name), data, 0o644)) // the mode is the installer's to set
		srcs = append(srcs, filepath.Join(src, name))
	}

	// An old portmap that a runtime is running: a copy of sleep.
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	old, err := os.ReadFile(sleep)
	must(t, err)
	oldPath := filepath.Join(dst, "portmap")
	must(t, os.WriteFile(oldPath, old, 0o755))
	running := exec.Command(oldPath, "60")
	must(t, running.Start())
	t.Cleanup(func() { running.Process.Kill(); running.Wait() })
	oldInode := inode(t, oldPath)

	if out, err := installBins(t, dst, srcs...); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	for name, data := range want {
		p := filepath.Join(dst, name)
		got, err := os.ReadFile(p)
		must(t, err)
		st, err := os.Stat(p)
		must(t, err)
		if !bytes.Equal(got, data) || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %q mode %v, want %q mode 0755", name, got, st.Mode().Perm(), data)
		}
	}
	if inode(t, oldPath) == oldInode {
		t.Errorf("the running portmap was overwritten in place, not replaced")
	}
	exe, err := os.Readlink("/proc/" + strconv.Itoa(running.Process.Pid) + "/exe")
	must(t, err)
	if !strings.HasSuffix(exe, "(deleted)") || running.ProcessState != nil {
		t.Errorf("the running old binary: exe %q, state %v; want it running from its replaced (deleted) file", exe, running.ProcessState)
	}
	des, err := os.ReadDir(dst)
	must(t, err)
	if len(des) != len(want) {
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		t.Errorf("%s holds %q, want only the installed binaries", dst, names)
	}

	// A second run (a restarted pod) writes nothing.
	inodes := map[string]uint64{}
	for name := range want {
		inodes[name] = inode(t, filepath.Join(dst, name))
	}
	out, err := installBins(t, dst, srcs...)
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	for name, ino := range inodes {
		if inode(t, filepath.Join(dst, name)) != ino {
			t.Errorf("%s rewritten although current", name)
		}
	}
	if !strings.Contains(out, "up to date") {
		t.Errorf("second install does not say the plugins are current:\n%s", out)
	}
}

// TestInstallCNIBinRefused: a missing source or no source fails before
// anything is written.
func TestInstallCNIBinRefused(t *testing.T) {
	src := filepath.Join(t.TempDir(), "podnet-bridge")
	must(t, os.WriteFile(src, []byte("bridge"), 0o755))
	for _, c := range []struct {
		srcs []string
		want string
	}{
		{[]string{src, "/nonexistent/loopback"}, "/nonexistent/loopback"},
		{nil, "name the binaries"},
		{[]string{filepath.Dir(src)}, "not a regular file"},
	} {
		dst := filepath.Join(t.TempDir(), "bin")
		out, err := installBins(t, dst, c.srcs...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%q: err %v, output %s; want a failure naming %q", c.srcs, err, out, c.want)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Errorf("%q: the directory was made or written to: %v", c.srcs, err)
		}
	}
}
