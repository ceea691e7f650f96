package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/service"
)

// The demo's two Services: kube-dns on a cluster IP over UDP and TCP,
// and nginx exposed as NodePort 31088.
var (
	dnsName   = service.Name{Namespace: "kube-system", Name: "kube-dns"}
	nginxName = service.Name{Namespace: "default", Name: "nginx"}
)

const nodePort = 31088

func (c *cluster) dnsIP() netip.Addr   { return nth(c.cfg.serviceCIDR, 10) }
func (c *cluster) nginxIP() netip.Addr { return nth(c.cfg.serviceCIDR, 20) }

// dnsBackends are the pods serving kube-dns: one on each worker but the
// first when there are several, so clients on worker-0 always cross nodes.
func (c *cluster) dnsBackends() []*pod {
	var out []*pod
	for i, w := range c.workers {
		if i == 0 && len(c.workers) > 1 {
			continue
		}
		out = append(out, w.pods[len(w.pods)-1])
	}
	return out
}

// nginxBackend is the one nginx pod: on worker-1, so a NodePort request to
// worker-0 must be forwarded to another node (NodePort 31088 reaching a pod on another node).
func (c *cluster) nginxBackend() *pod {
	w := c.workers[min(1, len(c.workers)-1)]
	return w.pods[0]
}

func (c *cluster) services() []service.Service {
	ep := func(p *pod) service.Endpoint {
		return service.Endpoint{Addr: p.ip, Ready: true, Serving: true, NodeName: p.worker.name}
	}
	var dnsEPs []service.Endpoint
	for _, p := range c.dnsBackends() {
		dnsEPs = append(dnsEPs, ep(p))
	}
	return []service.Service{
		{
			Name:       dnsName,
			ClusterIPs: []netip.Addr{c.dnsIP()},
			Ports: []service.Port{
				{Name: "dns", Protocol: service.UDP, Port: 53},
				{Name: "dns-tcp", Protocol: service.TCP, Port: 53},
			},
			Endpoints: dnsEPs,
		},
		{
			Name:       nginxName,
			ClusterIPs: []netip.Addr{c.nginxIP()},
			Ports:      []service.Port{{Protocol: service.TCP, Port: 80, NodePort: nodePort}},
			Endpoints:  []service.Endpoint{ep(c.nginxBackend())},
		},
	}
}

// programServices runs the service proxy's sync on every worker, as
// podnet-service-proxy (or kube-proxy) does on each node.
func (c *cluster) programServices(ctx context.Context) error {
	svcs := c.services()
	for _, w := range c.workers {
		p, err := service.New(service.Config{
			Backend:      service.IPTables(iptables.NewKernel(w.ns)),
			NodeName:     w.name,
			ClusterCIDRs: []netip.Prefix{c.cfg.clusterCIDR},
		})
		if err != nil {
			return err
		}
		if err := p.Replace(svcs); err != nil {
			return err
		}
		if _, err := p.Sync(ctx); err != nil {
			return fmt.Errorf("sync services on %s: %w", w.name, err)
		}
	}
	return nil
}

// checkServices reaches kube-dns from a pod on every node over UDP and
// TCP, and nginx's NodePort from outside through a node that does not run
// it, showing conntrack on both nodes.
func (c *cluster) checkServices(ctx context.Context, r *report) {
	servers, dnsNames, ok := c.serveProbes(r)
	defer closeAll(servers)
	if !ok {
		return
	}
	for _, w := range c.workers {
		c.checkClusterIP(ctx, r, w, dnsNames)
	}
	c.checkNodePort(ctx, r)
}

// serveProbes starts a probe server on every kube-dns backend (port 53)
// and on the nginx backend (port 80). It returns the servers started, for
// the caller to close, the DNS backends' names, and false when it reported
// a failure to r.
func (c *cluster) serveProbes(r *report) (servers []*probe.Server, dnsNames []string, ok bool) {
	for _, p := range c.dnsBackends() {
		s, err := probe.Serve(p.ns, netip.AddrPortFrom(p.ip, 53), p.name)
		if err != nil {
			r.fail("serve DNS on a pod", err)
			return servers, dnsNames, false
		}
		servers = append(servers, s)
		dnsNames = append(dnsNames, p.name)
	}
	ng := c.nginxBackend()
	s, err := probe.Serve(ng.ns, netip.AddrPortFrom(ng.ip, 80), ng.name)
	if err != nil {
		r.fail("serve nginx on a pod", err)
		return servers, dnsNames, false
	}
	return append(servers, s), dnsNames, true
}

// checkClusterIP asks kube-dns's cluster IP from w's first pod over UDP
// and TCP: one of dnsNames must answer, seeing the pod's address. On the
// first worker the evidence adds the proxy's rules for kube-dns.
func (c *cluster) checkClusterIP(ctx context.Context, r *report, w *worker, dnsNames []string) {
	vip := netip.AddrPortFrom(c.dnsIP(), 53)
	client := w.pods[0]
	var evidence []string
	ok := true
	for _, network := range []string{"udp", "tcp"} {
		rep, err := probe.Ask(client.ns, network, vip, timeout)
		if err != nil {
			ok = false
			evidence = append(evidence, fmt.Sprintf("%s: %v", network, err))
			continue
		}
		// A pod reaching itself through its Service (hairpin) is
		// masqueraded to the bridge's address, as kube-proxy does, so
		// the reply comes back through the node.
		hairpin := rep.Name == client.name
		wantSrc := client.ip
		if hairpin {
			wantSrc = nth(w.podCIDR, 1)
		}
		ok = ok && slices.Contains(dnsNames, rep.Name) && rep.Source.Addr() == wantSrc
		note := ""
		if hairpin {
			note = " (hairpin: the pod reached itself, masqueraded to cnio0's address)"
		}
		evidence = append(evidence, fmt.Sprintf("%s %s → answered by %s, which saw %s%s", network, vip, rep.Name, rep.Source, note))
	}
	if w == c.workers[0] {
		evidence = append(evidence, c.dnsRules(ctx, w)...)
	}
	r.check(fmt.Sprintf("ClusterIP %s (kube-dns) answers %s on %s over UDP and TCP", c.dnsIP(), client.name, w.name), ok, evidence...)
}

// dnsRules shows w's rules for kube-dns, as the command that lists them
// and its indented output: iptables rules when there are any, else the
// elements of podnet-service-proxy's nftables table.
func (c *cluster) dnsRules(ctx context.Context, w *worker) []string {
	if rules := c.rulesMentioning(ctx, w, dnsName.String()+":dns-tcp"); len(rules) > 0 {
		return append([]string{w.name + ": iptables-save -t nat | grep kube-dns:dns-tcp"}, indent(rules)...)
	}
	// podnet-service-proxy's default backend: elements of its nftables
	// table.
	return append([]string{w.name + ": nft list table ip podnet-proxy | grep " + c.dnsIP().String()},
		indent(nftMentioning(w, c.dnsIP().String()+" . "))...)
}

// checkNodePort asks nginx's NodePort from outside through the first
// worker, and shows conntrack there and, when nginx runs on another node,
// on that node.
func (c *cluster) checkNodePort(ctx context.Context, r *report) {
	ng := c.nginxBackend()
	entry := c.workers[0]
	dst := netip.AddrPortFrom(entry.ip, nodePort)
	rep, err := probe.Ask(c.outside, "tcp", dst, timeout)
	if err != nil {
		r.fail(fmt.Sprintf("NodePort %d reached from outside via %s", nodePort, entry.name), err)
		return
	}
	in := flowsOf(ctx, entry.ns, conntrack.Filter{Protocol: conntrack.TCP, OrigSrc: c.outIP, DstPort: nodePort})
	there := flowsOf(ctx, ng.worker.ns, conntrack.Filter{Protocol: conntrack.TCP, OrigDst: ng.ip, DstPort: 80})
	remote := ng.worker != entry
	ok := rep.Name == ng.name && containsAll(in, fmt.Sprintf("dport=%d", nodePort), "src="+ng.ip.String())
	if remote {
		ok = ok && containsAll(there, "dst="+ng.ip.String(), "dport=80")
	}
	evidence := []string{
		fmt.Sprintf("outside → %s answered by %s on %s, which saw %s", dst, rep.Name, ng.worker.name, rep.Source),
		entry.name + ": conntrack -L | grep " + fmt.Sprint(nodePort),
	}
	evidence = append(evidence, indent(in)...)
	if remote {
		evidence = append(evidence, ng.worker.name+": conntrack -L | grep "+ng.ip.String())
		evidence = append(evidence, indent(there)...)
	}
	r.check(fmt.Sprintf("NodePort %d on %s reaches nginx on %s (DNAT %s:%d → %s:80)", nodePort, entry.name, ng.worker.name,
		entry.ip, nodePort, ng.ip), ok, evidence...)
}

// nftMentioning returns the elements of the service proxy's nftables
// tables whose key or value contains s.
func nftMentioning(w *worker, s string) []string {
	es, err := service.NftElements(w.ns, "")
	if err != nil {
		return []string{"nft: " + err.Error()}
	}
	var lines []string
	for _, e := range es {
		if strings.Contains(e.Key, s) || strings.Contains(e.Value, s) {
			lines = append(lines, e.String())
		}
	}
	return lines
}

// rulesMentioning returns the nat rules of w whose text contains s, as
// iptables-save prints them: KUBE-SERVICES → KUBE-SVC →
// KUBE-SEP → DNAT path.
func (c *cluster) rulesMentioning(ctx context.Context, w *worker, s string) []string {
	t, err := iptables.NewKernel(w.ns).Save(ctx, iptables.IPv4, iptables.TableNAT)
	if err != nil {
		return []string{"iptables-save: " + err.Error()}
	}
	var out []string
	for _, kind := range []string{"-SERVICES", "-NODEPORTS", "-SVC-", "-EXT-", "-SEP-"} {
		for _, ch := range t.Chains {
			if !strings.Contains(ch.Name, kind) {
				continue
			}
			for _, r := range ch.Rules {
				if strings.Contains(r, s) {
					out = append(out, "-A "+ch.Name+" "+r)
				}
			}
		}
	}
	return out
}
