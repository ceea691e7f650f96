package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/podnet/podnet/netns/nstest"
)

// benchRules returns n distinct kube-proxy-shaped DNAT rules.
func benchRules(n int) []Rule {
	rules := make([]Rule, n)
	for i := range rules {
		rules[i] = Rule{
			Destination: Addr{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), 32)},
			Protocol:    TCP,
			Matches:     []Match{Comment(fmt.Sprintf("ns/svc-%d:http", i)), Ports{Dst: Port(80)}},
			Target:      DNAT{To: netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), Ports: Port(8080)},
		}
	}
	return rules
}

// BenchmarkRestore10k applies 10k rules as one transaction into an empty
// chain (the chain is deleted between iterations, untimed).
func BenchmarkRestore10k(b *testing.B) {
	ns := nstest.New(b)
	k := NewKernel(ns)
	ctx := context.Background()
	c := Chain{IPv4, TableNAT, "PODNET-BENCH"}
	rules := benchRules(10000)
	for b.Loop() {
		b.StopTimer()
		if err := k.Run(ctx, NewTransaction().DeleteChain(c)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := k.Run(ctx, NewTransaction().Declare(c, rules...)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/10000, "µs/rule")
}

// BenchmarkReapply10k re-applies an unchanged 10k-rule transaction: a full
// rewrite of the chain, and with SkipUnchanged (nothing to write).
func BenchmarkReapply10k(b *testing.B) {
	ns := nstest.New(b)
	k := NewKernel(ns)
	ctx := context.Background()
	c := Chain{IPv4, TableNAT, "PODNET-BENCH"}
	rules := benchRules(10000)
	if err := k.Run(ctx, NewTransaction().Declare(c, rules...)); err != nil {
		b.Fatal(err)
	}
	b.Run("rewrite", func(b *testing.B) {
		for b.Loop() {
			if err := k.Run(ctx, NewTransaction().Declare(c, rules...)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("skip-unchanged", func(b *testing.B) {
		for b.Loop() {
			if err := k.Run(ctx, NewTransaction().Declare(c, rules...).SkipUnchanged()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGoIPTablesPerRule1k appends 1k of the same rules with one
// go-iptables call (one iptables process) each — the pattern transactions
// replace. Scaled down from 10k: each call re-reads a growing table, so
// 10k would take minutes; µs/rule is reported for extrapolation.
func BenchmarkGoIPTablesPerRule1k(b *testing.B) {
	ns := nstest.New(b)
	k := NewKernel(ns)
	ctx := context.Background()
	c := Chain{IPv4, TableNAT, "PODNET-BENCH"}
	rules := benchRules(1000)
	args := make([][]string, len(rules))
	for i, r := range rules {
		args[i], _ = r.Args(IPv4)
	}
	ipt, err := k.iptables(IPv4)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		if err := k.Run(ctx, NewTransaction().Flush(c)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		err := ns.Do(func() error {
			for _, a := range args {
				if err := ipt.Append("nat", c.Name, a...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "µs/rule")
}
