package conntrack

import (
	"errors"
	"testing"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

const (
	establishedKey = "net.netfilter.nf_conntrack_tcp_timeout_established"
	closeWaitKey   = "net.netfilter.nf_conntrack_tcp_timeout_close_wait"
)

func timeouts(t *testing.T, ns *netns.NS) (established, closeWait string) {
	t.Helper()
	e, err := sysctl.Get(ns, establishedKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sysctl.Get(ns, closeWaitKey)
	if err != nil {
		t.Fatal(err)
	}
	return e, c
}

// TestSetTCPTimeouts: kube-proxy's values land in the namespace's
// sysctls, a zero field leaves its timeout alone, bad input changes
// nothing, and a write the kernel refuses puts back what was written
// before it.
func TestSetTCPTimeouts(t *testing.T) {
	ns := nstest.New(t)
	if err := SetTCPTimeouts(ns, TCPTimeouts{Established: 24 * time.Hour, CloseWait: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if e, c := timeouts(t, ns); e != "86400" || c != "3600" {
		t.Errorf("established %s, close-wait %s; want 86400 and 3600", e, c)
	}
	if err := SetTCPTimeouts(ns, TCPTimeouts{CloseWait: 90 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if e, c := timeouts(t, ns); e != "86400" || c != "90" {
		t.Errorf("established %s (left alone), close-wait %s (90)", e, c)
	}
	for _, bad := range []TCPTimeouts{{Established: -time.Second}, {CloseWait: 10 * time.Millisecond}} {
		if err := SetTCPTimeouts(ns, bad); !errors.Is(err, podnet.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
	// More seconds than the kernel holds in jiffies: EINVAL on the second
	// write, and the first is undone.
	if err := SetTCPTimeouts(ns, TCPTimeouts{Established: 2 * time.Hour, CloseWait: 100000 * time.Hour}); err == nil {
		t.Fatal("a close-wait timeout of 100000 h was accepted")
	}
	if e, c := timeouts(t, ns); e != "86400" || c != "90" {
		t.Errorf("after a refused write: established %s, close-wait %s; want 86400 and 90 as before", e, c)
	}
}
