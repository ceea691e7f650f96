package bridge

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
)

// SetNetfilter makes IPv4 and IPv6 traffic that bridges in ns forward
// between their ports pass the iptables and ip6tables hooks (on) or skip
// them (off). Kubernetes needs it on: a Service's DNAT must apply when the
// client and the endpoint are ports of the same bridge. The setting is per
// namespace and needs the br_netfilter module; without it the error
// matches ErrNotSupported.
//
// Equivalent to: sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
func SetNetfilter(ns *netns.NS, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	for _, key := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
		if err := sysctl.Set(ns, key, v); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = fmt.Errorf("%w (load br_netfilter): %w", podnet.ErrNotSupported, err)
			}
			return err
		}
	}
	return nil
}
