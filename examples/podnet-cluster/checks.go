package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/veth"
)

const timeout = 3 * time.Second

// report prints checks as a narrative: what is claimed, PASS or FAIL, and
// the evidence seen.
type report struct{ failed int }

func (r *report) check(claim string, ok bool, evidence ...string) {
	verdict := "PASS"
	if !ok {
		verdict = "FAIL"
		r.failed++
	}
	fmt.Printf("%s  %s\n", verdict, claim)
	for _, e := range evidence {
		fmt.Printf("        %s\n", e)
	}
}

func (r *report) fail(claim string, err error) { r.check(claim, false, "error: "+err.Error()) }

// flowsOf returns conntrack -L lines of ns for flows touching addr.
func flowsOf(ctx context.Context, ns *netns.NS, filter conntrack.Filter) []string {
	flows, err := conntrack.List(ctx, ns, filter.Match)
	if err != nil {
		return []string{"conntrack: " + err.Error()}
	}
	var out []string
	for _, f := range flows {
		out = append(out, f.String())
	}
	return out
}

// checkVethPath follows one pod's eth0 to its host veth on cnio0, as the
// one does by hand with ethtool -S, ip link and brctl show.
func (c *cluster) checkVethPath(r *report) {
	p := c.workers[0].pods[0]
	w := p.worker
	end, err := veth.Get(p.ns, "eth0")
	if err != nil {
		r.fail("the pod's eth0 is a veth", err)
		return
	}
	host, err := veth.Peer(p.ns, "eth0", w.ns)
	if err != nil {
		r.fail("eth0's peer is in the node", err)
		return
	}
	br, err := bridge.Get(w.ns, "cnio0")
	if err != nil {
		r.fail("cnio0 exists", err)
		return
	}
	ports, _ := bridge.Ports(w.ns, "cnio0")
	var names []string
	for _, pt := range ports {
		names = append(names, pt.Name)
	}
	r.check(fmt.Sprintf("%s's eth0 is one end of a veth whose other end is a port of cnio0 on %s", p.name, w.name),
		host.Master == br.Index && host.PeerIndex == end.Index,
		fmt.Sprintf("%s: ethtool -S eth0 → peer_ifindex: %d", p.name, end.PeerIndex),
		fmt.Sprintf("%s: %d: %s@if%d master cnio0 (ifindex %d)", w.name, host.Index, host.Name, host.PeerIndex, br.Index),
		fmt.Sprintf("%s: brctl show cnio0 → %s", w.name, strings.Join(names, " ")))
}

// checkPodToPod: a pod on worker-0 reaches a pod on worker-1, which sees
// the client's own address: no NAT between pods.
func (c *cluster) checkPodToPod(r *report) {
	if len(c.workers) < 2 {
		return
	}
	client, server := c.workers[0].pods[0], c.workers[1].pods[0]
	srv, err := probe.Serve(server.ns, netip.AddrPortFrom(server.ip, 8080), server.name)
	if err != nil {
		r.fail("serve on a pod", err)
		return
	}
	defer srv.Close()
	rep, err := probe.Ask(client.ns, "tcp", srv.Addr, timeout)
	if err != nil {
		r.fail(fmt.Sprintf("%s reaches %s across nodes", client.name, server.name), err)
		return
	}
	r.check(fmt.Sprintf("%s (%s) → %s (%s) across nodes, without NAT", client.name, client.ip, server.name, server.ip),
		rep.Source.Addr() == client.ip,
		fmt.Sprintf("the server saw the connection come from %s", rep.Source),
		fmt.Sprintf("%s: ip route get %s → via %s (host-gw route programmed by route.Sync)", client.worker.name, server.ip, server.worker.ip))
}

// checkMasquerade is the masquerade experiment: with the masquerade rules a
// server outside sees the node's address and conntrack shows the
// translation; without them it sees the pod's.
func (c *cluster) checkMasquerade(ctx context.Context, r *report) {
	w := c.workers[0]
	p := w.pods[len(w.pods)-1]
	srv, err := probe.Serve(c.outside, netip.AddrPortFrom(c.outIP, 8080), "outside")
	if err != nil {
		r.fail("serve outside", err)
		return
	}
	defer srv.Close()
	ask := func() (probe.Reply, []string, error) {
		rep, err := probe.Ask(p.ns, "tcp", srv.Addr, timeout)
		if err != nil {
			return rep, nil, err
		}
		flows := flowsOf(ctx, w.ns, conntrack.Filter{OrigSrc: p.ip, OrigDst: c.outIP, Protocol: conntrack.TCP})
		return rep, flows, nil
	}
	m := nat.NetworkMasquerade{Network: "bridge", Subnets: []netip.Prefix{w.podCIDR}}
	masqIn := nat.IPTables(iptables.NewKernel(w.ns))
	with := "with ipMasq"
	if c.kube != nil {
		// podnet-agent's rule set (examples/podnet-agent): the cluster CIDR
		// exempt, everything else from the node's pods masqueraded.
		m = nat.NetworkMasquerade{Network: "podnet-agent", Subnets: []netip.Prefix{w.podCIDR}, Exempt: []netip.Prefix{c.cfg.clusterCIDR}, RandomFully: true}
		with = "with podnet-agent's masquerade"
	}

	if c.cfg.masq {
		rep, flows, err := ask()
		if err != nil {
			r.fail("a pod reaches the outside", err)
			return
		}
		r.check(fmt.Sprintf("%s, %s (%s) reaches the outside as its node %s", with, p.name, p.ip, w.ip),
			rep.Source.Addr() == w.ip && containsAll(flows, "src="+p.ip.String(), "dst="+w.ip.String()),
			append([]string{fmt.Sprintf("outside saw %s", rep.Source), w.name + ": conntrack -L"}, indent(flows)...)...)
		// The experiment: take the network's masquerade away.
		if err := m.Delete(ctx, masqIn); err != nil {
			r.fail("remove the masquerade rules", err)
			return
		}
		conntrack.Delete(ctx, w.ns, conntrack.Filter{OrigSrc: p.ip}.Match)
	}
	rep, flows, err := ask()
	if err != nil {
		r.fail("a pod reaches the outside without masquerade", err)
		return
	}
	r.check(fmt.Sprintf("without masquerade, the outside sees %s's own address %s", p.name, p.ip),
		rep.Source.Addr() == p.ip && containsAll(flows, "src="+p.ip.String(), "dst="+p.ip.String()),
		append([]string{fmt.Sprintf("outside saw %s (the VPC router knows the pod routes)", rep.Source), w.name + ": conntrack -L (no translation)"}, indent(flows)...)...)
	switch {
	case c.kube != nil:
		// The agent converges: its next resync puts the rules back.
		start := time.Now()
		err := poll(ctx, 3*agentResyncPeriod, func() (bool, error) { return m.Check(ctx, masqIn) == nil, nil })
		took := time.Since(start)
		// Tests (goal 0) assert that the rules come back, not how soon.
		r.check(fmt.Sprintf("podnet-agent on %s put its masquerade rules back within its resync period (%v)", w.name, agentResyncPeriod),
			err == nil && (c.cfg.cp.goal == 0 || took <= agentResyncPeriod+time.Second),
			fmt.Sprintf("%s: %s back %s after they were deleted", w.name, m.Chain(), ms(took)))
	case c.cfg.masq:
		// Put it back as the next CNI ADD would.
		if err := m.Ensure(ctx, masqIn); err != nil {
			r.fail("restore the masquerade rules", err)
		}
	}
}

func containsAll(lines []string, subs ...string) bool {
	for _, l := range lines {
		ok := true
		for _, s := range subs {
			if !strings.Contains(l, s) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func indent(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = "  " + l
	}
	return out
}
