package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

// TestPlanDedup: a chain declared, flushed or deleted several times in one
// transaction gets one ':' line and at most one '-X' line.
func TestPlanDedup(t *testing.T) {
	a := Chain{IPv4, TableNAT, "PODNET-A"}
	b := Chain{IPv4, TableNAT, "PODNET-B"}
	tx := NewTransaction().
		Flush(a).Declare(a, Rule{Target: Return}).Flush(a).
		DeleteChain(b).DeleteChain(b).Flush(b)
	text, err := tx.Text(IPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := "*nat\n:PODNET-A - [0:0]\n:PODNET-B - [0:0]\n-A PODNET-A -j RETURN\n-X PODNET-B\nCOMMIT\n"
	if text != want {
		t.Errorf("got\n%s\nwant\n%s", text, want)
	}
}

// BenchmarkPlanChains plans a transaction declaring 60k chains, the size of
// a 10k-Service proxy table: planning must stay linear in the chain count.
func BenchmarkPlanChains(b *testing.B) {
	tx := NewTransaction()
	for i := range 60000 {
		tx.Declare(Chain{IPv4, TableNAT, fmt.Sprintf("PODNET-SEP-%016d", i)}, Rule{Target: Return})
	}
	for b.Loop() {
		text, err := tx.Text(IPv4)
		if err != nil || strings.Count(text, "\n:") != 60000 {
			b.Fatal(err)
		}
	}
}

// TestZeroCounters: -Z opens each table section of the restore input, and
// the kernel applies it (counters reset, rules kept).
func TestZeroCounters(t *testing.T) {
	a := Chain{IPv4, TableNAT, "PODNET-A"}
	f := Chain{IPv4, TableFilter, "PODNET-F"}
	text, err := NewTransaction().ZeroCounters().Declare(a, Rule{Target: Return}).Declare(f).Text(IPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := "*nat\n-Z\n:PODNET-A - [0:0]\n-A PODNET-A -j RETURN\nCOMMIT\n*filter\n-Z\n:PODNET-F - [0:0]\nCOMMIT\n"
	if text != want {
		t.Errorf("got\n%s\nwant\n%s", text, want)
	}
	ns := nstest.New(t)
	k := NewKernel(ns)
	ctx := context.Background()
	// A rule that counts: every packet of a ping to loopback.
	out := Chain{IPv4, TableFilter, "OUTPUT"}
	if err := k.Run(ctx, NewTransaction().Declare(f).Append(out, Rule{Target: Jump(f.Name)})); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(ns, netip.MustParseAddr("127.0.0.1"), time.Second); err != nil {
		t.Fatal(err)
	}
	counted := func() string {
		out, err := execns.Output(ctx, ns, nil, "iptables-save", "-c", "-t", "filter")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasSuffix(l, "-A OUTPUT -j PODNET-F") {
				return l
			}
		}
		t.Fatalf("jump missing:\n%s", out)
		return ""
	}
	if c := counted(); strings.HasPrefix(c, "[0:0]") {
		t.Fatalf("ping not counted: %s", c)
	}
	if err := k.Run(ctx, NewTransaction().ZeroCounters().Declare(f)); err != nil {
		t.Fatal(err)
	}
	if c := counted(); !strings.HasPrefix(c, "[0:0]") {
		t.Errorf("counters not reset: %s", c)
	}
}
