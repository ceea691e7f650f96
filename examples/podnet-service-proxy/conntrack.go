package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
)

// conntrackTimeouts are kube-proxy's --conntrack-tcp-timeout-established
// and --conntrack-tcp-timeout-close-wait: the namespace's conntrack
// timeouts for TCP flows in those states. 0 leaves one as it is.
type conntrackTimeouts struct {
	established, closeWait time.Duration
}

// sysctls returns the net.netfilter keys and values t sets.
func (t conntrackTimeouts) sysctls() [][2]string {
	var out [][2]string
	for _, s := range []struct {
		key string
		d   time.Duration
	}{
		{"net.netfilter.nf_conntrack_tcp_timeout_established", t.established},
		{"net.netfilter.nf_conntrack_tcp_timeout_close_wait", t.closeWait},
	} {
		if s.d > 0 {
			out = append(out, [2]string{s.key, strconv.Itoa(int(s.d / time.Second))})
		}
	}
	return out
}

func (t conntrackTimeouts) validate() error {
	for _, d := range []time.Duration{t.established, t.closeWait} {
		if d < 0 || d > 0 && d < time.Second {
			return fmt.Errorf("conntrack timeout %v: want 0 or at least a second", d)
		}
	}
	return nil
}

// setConntrack writes t into ns's sysctls where they differ, as kube-proxy
// does at its start. With required false (the proxy itself, which runs
// unprivileged) a read-only /proc/sys is a warning: the DaemonSet's
// privileged init step (--conntrack-only) has set them.
func setConntrack(ns *netns.NS, t conntrackTimeouts, required bool, log *slog.Logger) error {
	for _, kv := range t.sysctls() {
		err := sysctl.Set(ns, kv[0], kv[1])
		if err == nil {
			continue
		}
		if required || !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("conntrack timeout: %w", err)
		}
		log.Warn("cannot set a conntrack timeout here (read-only /proc/sys): run podnet-service-proxy --conntrack-only privileged first, as the DaemonSet's init container does, or give the flag 0",
			"sysctl", kv[0], "want", kv[1], "err", err)
	}
	return nil
}
