// Package sysctl reads and writes per-namespace kernel parameters under
// /proc/sys/net. Those files act on the network namespace of the thread
// that opens them, so every access runs inside netns.Do.
package sysctl

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

func path(key string) (string, error) {
	k := key
	if !strings.Contains(k, "/") {
		// Dotted form; a key with an interface name that has dots in it
		// must be given with slashes.
		k = strings.ReplaceAll(key, ".", "/")
	}
	if !strings.HasPrefix(k, "net/") || strings.Contains(k, "//") || filepath.Clean(k) != k {
		return "", podnet.Invalid("sysctl key %q: not under net/", key)
	}
	return "/proc/sys/" + k, nil
}

// Get returns the value of key (e.g. "net.ipv4.ip_forward") in ns, without
// the trailing newline.
//
// Equivalent to: ip netns exec NS sysctl -n KEY
func Get(ns *netns.NS, key string) (string, error) {
	p, err := path(key)
	if err != nil {
		return "", err
	}
	var v []byte
	err = ns.Do(func() error {
		v, err = os.ReadFile(p)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s in netns %q: %w", key, ns, err)
	}
	return strings.TrimSpace(string(v)), nil
}

// Set writes value to key in ns, unless it already has that value.
//
// Equivalent to: ip netns exec NS sysctl -w KEY=VALUE
func Set(ns *netns.NS, key, value string) error {
	p, err := path(key)
	if err != nil {
		return err
	}
	err = ns.Do(func() error {
		if cur, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(cur)) == value {
			return nil
		}
		return os.WriteFile(p, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("write sysctl %s=%s in netns %q: %w", key, value, ns, err)
	}
	return nil
}
