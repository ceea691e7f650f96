package main

import (
	"errors"
	"log/slog"
	"syscall"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/netns"
)

// setConntrack writes kube-proxy's conntrack timeouts into ns where they
// differ, as kube-proxy does at its start. With required false (the proxy
// itself, which runs unprivileged) a read-only /proc/sys is a warning: the
// DaemonSet's privileged init step (--conntrack-only) has set them.
func setConntrack(ns *netns.NS, t conntrack.TCPTimeouts, required bool, log *slog.Logger) error {
	err := conntrack.SetTCPTimeouts(ns, t)
	if err == nil || required || !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EPERM) {
		return err
	}
	log.Warn("cannot set the conntrack timeouts here (read-only /proc/sys): run podnet-service-proxy --conntrack-only privileged first, as the DaemonSet's init container does, or give the flags 0",
		"established", t.Established, "close_wait", t.CloseWait, "err", err)
	return nil
}
