package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

var a = netip.MustParseAddr

func TestFilterMatch(t *testing.T) {
	fl := Flow{
		Protocol: UDP,
		Orig:     Tuple{Src: a("10.200.0.2"), Dst: a("10.96.0.10"), SrcPort: 40000, DstPort: 53},
		Reply:    Tuple{Src: a("10.200.1.5"), Dst: a("10.200.0.2"), SrcPort: 5353, DstPort: 40000},
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want bool
	}{
		{"zero filter", Filter{}, true},
		{"protocol", Filter{Protocol: UDP}, true},
		{"other protocol", Filter{Protocol: TCP}, false},
		{"family", Filter{Family: podnet.IPv4}, true},
		{"other family", Filter{Family: podnet.IPv6}, false},
		{"service and port", Filter{OrigDst: a("10.96.0.10"), DstPort: 53}, true},
		{"other port", Filter{OrigDst: a("10.96.0.10"), DstPort: 54}, false},
		{"backend", Filter{ReplySrc: a("10.200.1.5"), ReplySrcPort: 5353}, true},
		{"other backend port", Filter{ReplySrc: a("10.200.1.5"), ReplySrcPort: 53}, false},
		{"mapped address", Filter{OrigSrc: a("::ffff:10.200.0.2")}, true},
		{"reply destination", Filter{ReplyDst: a("10.240.0.10")}, false},
	} {
		if got := tc.f.Match(fl); got != tc.want {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.want)
		}
	}
	if Any()(fl) {
		t.Error("Any() selected a flow")
	}
	if !Any(Filter{Protocol: TCP}, Filter{DstPort: 53})(fl) || Any(Filter{Protocol: TCP}, Filter{DstPort: 54})(fl) {
		t.Error("Any does not select when exactly one filter does")
	}
}

func TestFlowString(t *testing.T) {
	fl := Flow{
		Protocol: UDP, Timeout: 29,
		Orig:  Tuple{Src: a("10.200.0.2"), Dst: a("10.96.0.10"), SrcPort: 40000, DstPort: 53},
		Reply: Tuple{Src: a("10.200.1.5"), Dst: a("10.200.0.2"), SrcPort: 53, DstPort: 40000},
		Use:   1,
	}
	want := "udp      17 29 src=10.200.0.2 dst=10.96.0.10 sport=40000 dport=53 [UNREPLIED] src=10.200.1.5 dst=10.200.0.2 sport=53 dport=40000 mark=0 use=1"
	if got := fl.String(); got != want {
		t.Errorf("String() =\n%q\nwant\n%q", got, want)
	}
	icmp := Flow{Protocol: ICMP, Orig: Tuple{Src: a("10.0.0.1"), Dst: a("10.0.0.2")}, Reply: Tuple{Src: a("10.0.0.2"), Dst: a("10.0.0.1")}, SeenReply: true}
	if got := icmp.String(); got != "icmp     1 0 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 mark=0 use=0" {
		t.Errorf("icmp String() = %q", got)
	}
}

// TestCalls runs each call in a real namespace: an empty table lists as
// empty, Delete without a predicate is refused, and a cancelled context
// stops every call with its error.
func TestCalls(t *testing.T) {
	ns := nstest.New(t)
	ctx := context.Background()
	flows, err := List(ctx, ns, nil)
	if err != nil || len(flows) != 0 {
		t.Fatalf("List of a new namespace = %v, %v", flows, err)
	}
	if n, err := Delete(ctx, ns, Filter{Protocol: UDP}.Match); err != nil || n != 0 {
		t.Errorf("Delete in an empty table = %d, %v", n, err)
	}
	if err := Flush(ctx, ns); err != nil {
		t.Errorf("Flush: %v", err)
	}
	if _, err := Delete(ctx, ns, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Delete(nil) = %v, want ErrInvalid", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := List(done, ns, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("List with a cancelled context: %v", err)
	}
	if _, err := Delete(done, ns, Filter{}.Match); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with a cancelled context: %v", err)
	}
	if err := Flush(done, ns); !errors.Is(err, context.Canceled) {
		t.Errorf("Flush with a cancelled context: %v", err)
	}
}
