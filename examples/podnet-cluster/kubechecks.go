package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/service"
)

// checkKube runs the checks only a control plane makes possible: the
// proxies follow EndpointSlice changes, the agents follow Node deletion,
// traffic survives the API server going away, and the latency of each
// change as the proxies and the demo measured it.
func (c *cluster) checkKube(ctx context.Context, r *report) {
	cands := c.nginxCandidates(3)
	var servers []*probe.Server
	defer func() { closeAll(servers) }()
	for _, p := range cands {
		s, err := probe.Serve(p.ns, netip.AddrPortFrom(p.ip, 80), p.name)
		if err != nil {
			r.fail("serve nginx on a pod", err)
			return
		}
		servers = append(servers, s)
	}
	for _, p := range c.dnsBackends() {
		s, err := probe.Serve(p.ns, netip.AddrPortFrom(p.ip, 53), p.name)
		if err != nil {
			r.fail("serve DNS on a pod", err)
			return
		}
		servers = append(servers, s)
	}
	c.checkScaling(ctx, r, cands)
	c.checkNodeDeletion(ctx, r)
	c.checkAPIServerRestart(ctx, r, cands)
	c.reportLatency(ctx, r)
}

// nginx returns the nginx Service with the endpoints of pods.
func (c *cluster) nginx(pods ...*pod) service.Service {
	var s service.Service
	for _, svc := range c.services() {
		if svc.Name == nginxName {
			s = svc
		}
	}
	s.Endpoints = nil
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, service.Endpoint{Addr: p.ip, Ready: true, Serving: true, NodeName: p.worker.name})
	}
	return s
}

// nginxCandidates are up to n pods for nginx: its one backend first, then
// pods taken from the workers in turn, so that endpoints spread over nodes.
func (c *cluster) nginxCandidates(n int) []*pod {
	first := c.nginxBackend()
	out := []*pod{first}
	for j := range c.cfg.podsPerNode {
		for _, w := range c.workers {
			if p := w.pods[j]; p != first && len(out) < n {
				out = append(out, p)
			}
		}
	}
	return out
}

func names(pods []*pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.name)
	}
	return out
}

func (c *cluster) withinGoal(d time.Duration) bool { return c.cfg.cp.goal == 0 || d < c.cfg.cp.goal }

func (c *cluster) goalText() string {
	if c.cfg.cp.goal == 0 {
		return ""
	}
	return " within " + c.cfg.cp.goal.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

// checkScaling scales nginx's EndpointSlice from one endpoint to several
// and back, and measures from worker-0 how long each change takes to move
// new connections.
func (c *cluster) checkScaling(ctx context.Context, r *report, cands []*pod) {
	if len(cands) < 2 {
		return
	}
	client := c.workers[0].pods[0]
	vip := netip.AddrPortFrom(c.nginxIP(), 80)
	added := map[string]bool{}
	for _, p := range cands[1:] {
		added[p.name] = true
	}
	at, err := c.writeSlice(ctx, c.nginx(cands...))
	if err != nil {
		r.fail("scale nginx up", err)
		return
	}
	up, rep, err := firstAnswer(client.ns, vip, at, 10*time.Second, func(r probe.Reply) bool { return added[r.Name] })
	if err != nil {
		r.fail(fmt.Sprintf("scaling nginx to %d endpoints moves traffic", len(cands)), err)
		return
	}
	c.kube.changes = append(c.kube.changes, change{fmt.Sprintf("nginx scaled 1 → %d", len(cands)), up})
	seen, err := answeredBy(client, vip, names(cands), 10*time.Second)
	evidence := []string{
		fmt.Sprintf("EndpointSlice %s/%s: %s", nginxName.Namespace, sliceName(c.nginx()), strings.Join(names(cands), ", ")),
		fmt.Sprintf("%s → %s: first answer from a new endpoint (%s) %s after the API write", client.name, vip, rep.Name, ms(up)),
		fmt.Sprintf("then answered by %s", strings.Join(seen, ", ")),
	}
	if err != nil {
		evidence = append(evidence, err.Error())
	}
	r.check(fmt.Sprintf("scaling nginx's EndpointSlice from 1 to %d endpoints moves new connections%s", len(cands), c.goalText()),
		err == nil && c.withinGoal(up), evidence...)

	at, err = c.writeSlice(ctx, c.nginx(cands[0]))
	if err != nil {
		r.fail("scale nginx down", err)
		return
	}
	down, err := onlyAnswer(client, vip, cands[0].name, at, 10*time.Second)
	if err != nil {
		r.fail("scaling nginx back to 1 endpoint moves traffic", err)
		return
	}
	c.kube.changes = append(c.kube.changes, change{fmt.Sprintf("nginx scaled %d → 1", len(cands)), down})
	r.check(fmt.Sprintf("scaling it back to 1 endpoint leaves only %s answering%s", cands[0].name, c.goalText()), c.withinGoal(down),
		fmt.Sprintf("%s → %s: from %s after the API write, %d asks in a row all reached %s", client.name, vip, ms(down), onlyRun, cands[0].name))
}

// answeredBy asks dst from client until every one of want has answered,
// within total, and returns who answered.
func answeredBy(client *pod, dst netip.AddrPort, want []string, total time.Duration) ([]string, error) {
	seen := map[string]bool{}
	deadline := time.Now().Add(total)
	for {
		if rep, err := probe.Ask(client.ns, "tcp", dst, timeout); err == nil {
			seen[rep.Name] = true
		}
		all := true
		for _, w := range want {
			all = all && seen[w]
		}
		var got []string
		for n := range seen {
			got = append(got, n)
		}
		slices.Sort(got)
		if all {
			return got, nil
		}
		if time.Now().After(deadline) {
			return got, fmt.Errorf("not all of %v answered within %v", want, total)
		}
	}
}

// onlyRun is how many asks in a row must reach the one remaining endpoint
// for a scale-down to count as applied: with three endpoints left in the
// rules, twenty in a row at random would happen once in 3^20.
const onlyRun = 20

// onlyAnswer asks dst until onlyRun asks in a row are answered by name, and
// returns the time from since to the first ask of that run.
func onlyAnswer(client *pod, dst netip.AddrPort, name string, since time.Time, total time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(total)
	var runStart time.Time
	run := 0
	for {
		t := time.Now()
		rep, err := probe.Ask(client.ns, "tcp", dst, timeout)
		switch {
		case err == nil && rep.Name == name:
			if run == 0 {
				runStart = t
			}
			run++
			if run == onlyRun {
				return runStart.Sub(since), nil
			}
		default:
			run = 0
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s still reached other endpoints after %v", dst, total)
		}
	}
}

// podRoute returns the route of w to prefix dst, if any.
func podRoute(w *worker, dst netip.Prefix) (route.Route, bool, error) {
	routes, err := route.List(w.ns, route.Filter{Family: route.IPv4})
	if err != nil {
		return route.Route{}, false, err
	}
	for _, rt := range routes {
		if rt.Dst == dst {
			return rt, true, nil
		}
	}
	return route.Route{}, false, nil
}

// checkNodeDeletion deletes the last worker's Node: every other agent
// removes its route to that node's pod CIDR, so its pods become
// unreachable; registering the Node again brings the routes back.
func (c *cluster) checkNodeDeletion(ctx context.Context, r *report) {
	if len(c.workers) < 2 {
		return
	}
	victim := c.workers[len(c.workers)-1]
	others := c.workers[:len(c.workers)-1]
	client, server := c.workers[0].pods[0], victim.pods[0]
	srv, err := probe.Serve(server.ns, netip.AddrPortFrom(server.ip, 8080), server.name)
	if err != nil {
		r.fail("serve on a pod", err)
		return
	}
	defer srv.Close()
	claim := fmt.Sprintf("deleting Node %s removes its pod route from every other worker; registering it again restores it", victim.name)
	var evidence []string
	before, ok, err := podRoute(others[0], victim.podCIDR)
	if err != nil || !ok {
		r.check(claim, false, fmt.Sprintf("%s has no route to %s before the deletion (%v)", others[0].name, victim.podCIDR, err))
		return
	}
	evidence = append(evidence, fmt.Sprintf("%s: ip route → %s", others[0].name, before))

	t0 := time.Now()
	if err := c.kube.client.CoreV1().Nodes().Delete(ctx, victim.name, metav1.DeleteOptions{}); err != nil {
		r.fail(claim, err)
		return
	}
	err = poll(ctx, 10*time.Second, func() (bool, error) {
		for _, w := range others {
			if _, ok, err := podRoute(w, victim.podCIDR); ok || err != nil {
				return false, err
			}
		}
		return true, nil
	})
	gone := time.Since(t0)
	ok = err == nil
	if ok {
		evidence = append(evidence, fmt.Sprintf("kubectl delete node %s: the route to %s was gone from %d other workers %s later", victim.name, victim.podCIDR, len(others), ms(gone)))
	} else {
		evidence = append(evidence, fmt.Sprintf("route to %s still on a worker: %v", victim.podCIDR, err))
	}
	if _, err := probe.Ask(client.ns, "tcp", srv.Addr, 500*time.Millisecond); err != nil {
		evidence = append(evidence, fmt.Sprintf("%s → %s (%s): %v", client.name, srv.Addr, server.name, shortErr(err)))
	} else {
		ok = false
		evidence = append(evidence, fmt.Sprintf("%s → %s still answered", client.name, srv.Addr))
	}

	t0 = time.Now()
	if err := registerNode(ctx, c.kube.client, victim); err != nil {
		r.fail(claim, err)
		return
	}
	err = poll(ctx, 30*time.Second, func() (bool, error) {
		cond, err := networkReady(ctx, c.kube.client, victim.name)
		if cond == nil || err != nil {
			return false, err
		}
		for _, w := range others {
			if _, ok, err := podRoute(w, victim.podCIDR); !ok || err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		ok = false
		evidence = append(evidence, fmt.Sprintf("after registering %s again: %v", victim.name, err))
	} else {
		evidence = append(evidence, fmt.Sprintf("Node %s registered again: NetworkUnavailable=False and the routes back %s later", victim.name, ms(time.Since(t0))))
	}
	if rep, err := probe.Poll(client.ns, "tcp", srv.Addr, 10*time.Second); err != nil || rep.Name != server.name {
		ok = false
		evidence = append(evidence, fmt.Sprintf("%s → %s: %v", client.name, srv.Addr, err))
	} else {
		evidence = append(evidence, fmt.Sprintf("%s → %s answered by %s again", client.name, srv.Addr, rep.Name))
	}
	r.check(claim, ok, evidence...)
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// traffic asks every Service the way the checks do: kube-dns over UDP and
// TCP from a pod on every worker, and nginx's NodePort from outside.
func (c *cluster) traffic() []error {
	var errs []error
	for _, w := range c.workers {
		for _, network := range []string{"udp", "tcp"} {
			if _, err := probe.Ask(w.pods[0].ns, network, netip.AddrPortFrom(c.dnsIP(), 53), timeout); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if _, err := probe.Ask(c.outside, "tcp", netip.AddrPortFrom(c.workers[0].ip, nodePort), timeout); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// trafficWatch asks the Services in rounds until stopped.
type trafficWatch struct {
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	rounds int
	errs   []error
}

func (c *cluster) watchTraffic() *trafficWatch {
	t := &trafficWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(t.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			errs := c.traffic()
			t.mu.Lock()
			t.rounds++
			t.errs = append(t.errs, errs...)
			t.mu.Unlock()
			select {
			case <-t.stop:
				return
			case <-tick.C: // pace of the rounds
			}
		}
	}()
	return t
}

func (t *trafficWatch) result() (rounds int, errs []error) {
	close(t.stop)
	<-t.done
	return t.rounds, t.errs
}

// checkAPIServerRestart stops kube-apiserver and starts it again while
// every Service is asked in rounds: the rules in force keep serving (the
// proxies resync meanwhile), and a change made after the restart is
// followed.
func (c *cluster) checkAPIServerRestart(ctx context.Context, r *report, cands []*pod) {
	claim := "with kube-apiserver stopped and started again, every Service keeps answering throughout"
	watch := c.watchTraffic()
	t0 := time.Now()
	if err := c.kube.cp.StopAPIServer(); err != nil {
		watch.result()
		r.fail(claim, err)
		return
	}
	// Ask while it is down for longer than a proxy resync period.
	downFor := 6 * time.Second
	_, apiErr := c.kube.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	err := poll(ctx, downFor+time.Second, func() (bool, error) { return time.Since(t0) >= downFor, nil })
	if err == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err = c.kube.cp.StartAPIServer(sctx)
		cancel()
	}
	outage := time.Since(t0)
	rounds, errs := watch.result()
	if err != nil {
		r.fail(claim, fmt.Errorf("restart kube-apiserver: %w", err))
		return
	}
	evidence := []string{
		fmt.Sprintf("kube-apiserver away for %v (while down: %s)", outage.Round(100*time.Millisecond), shortErr(apiErr)),
		fmt.Sprintf("%d rounds of asks meanwhile (kube-dns UDP+TCP from every worker, NodePort %d from outside): %d failed", rounds, nodePort, len(errs)),
	}
	for _, e := range errs[:min(len(errs), 3)] {
		evidence = append(evidence, "  "+e.Error())
	}
	r.check(claim, apiErr != nil && rounds > 0 && len(errs) == 0, evidence...)

	if len(cands) < 2 {
		return
	}
	client := c.workers[0].pods[0]
	vip := netip.AddrPortFrom(c.nginxIP(), 80)
	claim = "a change made after the restart is followed"
	var moves []string
	ok := true
	for _, to := range []*pod{cands[1], cands[0]} {
		at, err := c.writeSlice(ctx, c.nginx(to))
		if err != nil {
			r.fail(claim, err)
			return
		}
		took, err := onlyAnswer(client, vip, to.name, at, time.Minute)
		if err != nil {
			ok = false
			moves = append(moves, err.Error())
			break
		}
		c.kube.changes = append(c.kube.changes, change{"nginx moved to " + to.name + " after the restart", took})
		moves = append(moves, fmt.Sprintf("nginx → %s: only %s answered %s after the API write", to.name, to.name, ms(took)))
	}
	r.check(claim, ok, moves...)
}

// reportLatency prints the network programming latency of the demo's
// EndpointSlice changes twice: as the proxies measured it (their
// kubeproxy_network_programming_duration_seconds histograms summed, with
// histogram_quantile's interpolation), and as the demo saw it (from the
// API write to the first answer showing the change on worker-0).
func (c *cluster) reportLatency(ctx context.Context, r *report) {
	var sum histogram
	var evidence []string
	ok := true
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, w := range c.workers {
		var one histogram
		var text string
		// The demo waited for worker-0 to show each change; another
		// worker's proxy may still be catching up (after the API server's
		// restart its informers reconnect with a backoff).
		err := poll(ctx, 10*time.Second, func() (bool, error) {
			var err error
			if text, err = scrape(ctx, hc, c.kube.metrics[w.name]); err != nil {
				return false, err
			}
			one = histogram{}
			if err := one.addScrape(strings.NewReader(text), programmingMetric); err != nil {
				return false, err
			}
			return int(one.samples()) >= c.kube.writes, nil
		})
		if err != nil && int(one.samples()) > 0 {
			err = nil // judged below
		}
		if err == nil {
			err = sum.addScrape(strings.NewReader(text), programmingMetric)
		}
		if err != nil {
			ok = false
			evidence = append(evidence, fmt.Sprintf("%s: %v", w.name, err))
			continue
		}
		// One observation per change a proxy saw: never more than the
		// writes, and fewer only when a relist after the API server's
		// restart brought two writes to a slice as one change.
		if n := int(one.samples()); n == 0 || n > c.kube.writes || n < c.kube.writes-1 {
			ok = false
		}
		evidence = append(evidence, fmt.Sprintf("%s: %.0f observations for %d EndpointSlice writes, p50 %s p99 %s",
			w.name, one.samples(), c.kube.writes, seconds(one.quantile(0.5)), seconds(one.quantile(0.99))))
	}
	evidence = append(evidence, fmt.Sprintf("all proxies (sum by le): p50 %s p99 %s over %.0f observations",
		seconds(sum.quantile(0.5)), seconds(sum.quantile(0.99)), sum.samples()))
	var took []time.Duration
	for _, ch := range c.kube.changes {
		took = append(took, ch.took)
		evidence = append(evidence, fmt.Sprintf("  demo: %-44s %s", ch.what, ms(ch.took)))
	}
	evidence = append(evidence, fmt.Sprintf("demo's own measurement (API write → first answer showing it on %s): p50 %s p99 %s over %d changes",
		c.workers[0].name, ms(percentile(took, 0.5)), ms(percentile(took, 0.99)), len(took)))
	r.check("every proxy measured the network programming latency of the changes it saw ("+programmingMetric+")", ok, evidence...)
}

func seconds(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	return ms(time.Duration(s * float64(time.Second)))
}

// scrape returns the /metrics page served on addr.
func scrape(ctx context.Context, hc *http.Client, addr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), err
}
