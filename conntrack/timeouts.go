package conntrack

import (
	"fmt"
	"strconv"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
)

// TCPTimeouts are how long the conntrack table of a namespace keeps TCP
// flows in two states, the two kube-proxy sets (its
// --conntrack-tcp-timeout-established, default 24 h, and
// --conntrack-tcp-timeout-close-wait, default 1 h; the kernel's defaults
// are 5 days and 60 s). A zero field leaves that timeout as it is.
type TCPTimeouts struct {
	Established time.Duration
	CloseWait   time.Duration
}

func (t TCPTimeouts) sysctls() []struct{ key, value string } {
	var out []struct{ key, value string }
	for _, s := range []struct {
		key string
		d   time.Duration
	}{
		{"net.netfilter.nf_conntrack_tcp_timeout_established", t.Established},
		{"net.netfilter.nf_conntrack_tcp_timeout_close_wait", t.CloseWait},
	} {
		if s.d != 0 {
			out = append(out, struct{ key, value string }{s.key, strconv.Itoa(int(s.d / time.Second))})
		}
	}
	return out
}

// Validate reports a timeout that is negative or under a second (the
// sysctls count whole seconds) as an error matching podnet.ErrInvalid.
func (t TCPTimeouts) Validate() error {
	for _, d := range []time.Duration{t.Established, t.CloseWait} {
		if d < 0 || d > 0 && d < time.Second {
			return podnet.Invalid("conntrack TCP timeout %v: want 0 (unchanged) or at least a second", d)
		}
	}
	return nil
}

// SetTCPTimeouts writes t into ns's sysctls where they differ from it. If
// a write fails, the timeouts already written are put back and the error
// (matching the errno, EROFS for a read-only /proc/sys) is returned; bad
// input changes nothing.
//
// Equivalent to: ip netns exec NS sysctl -w
// net.netfilter.nf_conntrack_tcp_timeout_established=SECONDS
// net.netfilter.nf_conntrack_tcp_timeout_close_wait=SECONDS
func SetTCPTimeouts(ns *netns.NS, t TCPTimeouts) error {
	if err := t.Validate(); err != nil {
		return err
	}
	var undo []func()
	for _, s := range t.sysctls() {
		old, err := sysctl.Get(ns, s.key)
		if err == nil {
			err = sysctl.Set(ns, s.key, s.value)
		}
		if err != nil {
			for _, u := range undo {
				u()
			}
			return fmt.Errorf("conntrack TCP timeout: %w", err)
		}
		undo = append(undo, func() { sysctl.Set(ns, s.key, old) })
	}
	return nil
}
