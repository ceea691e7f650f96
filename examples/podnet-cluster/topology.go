package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/cni"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// stateDir records what a run made, so the next start can remove the
// leftovers of a run that crashed. It is on /run: a tmpfs, gone at reboot.
const stateDir = "/run/podnet-cluster"

// config is what the flags set.
type config struct {
	nodes, podsPerNode int
	masq               bool
	keep               bool
	cniPath            []string
	nodeNet            netip.Prefix // 10.240.0.0/24
	clusterCIDR        netip.Prefix // 10.200.0.0/16
	serviceCIDR        netip.Prefix // 10.32.0.0/24
	cp                 cpOptions    // --control-plane
}

// worker is one node of the cluster.
type worker struct {
	name    string
	ns      *netns.NS
	ip      netip.Addr   // on the node network, 10.240.0.2N
	podCIDR netip.Prefix // 10.200.N.0/24
	pods    []*pod
	dataDir string
	// With --control-plane: the directory podnet-agent writes its conflist
	// to, and the conflist, which pods are attached with.
	confDir  string
	conflist *libcni.NetworkConfigList
}

// pod is one pod, attached by podnet-bridge.
type pod struct {
	name   string
	ns     *netns.NS
	ip     netip.Addr
	worker *worker
	rt     *libcni.RuntimeConf
}

type cluster struct {
	cfg     config
	sw      *netns.NS // the switch joining the node network
	outside *netns.NS
	outIP   netip.Addr
	workers []*worker
	cni     *libcni.CNIConfig
	names   []string     // every namespace made, for teardown
	kube    *kubeCluster // with --control-plane
	daemons []*daemon    // processes started, for teardown
}

// nsName prefixes nothing: the names are Kubernetes The Hard Way's
// (worker-0 …).
func (c *cluster) newNS(name string) (*netns.NS, error) {
	ns, err := netns.NewNamed(name)
	if err != nil {
		return nil, err
	}
	c.names = append(c.names, name)
	if err := c.saveState(); err != nil {
		return nil, err
	}
	if err := link.SetUp(ns, "lo"); err != nil {
		return nil, err
	}
	return ns, nil
}

func (c *cluster) saveState() error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stateDir, "namespaces"), []byte(strings.Join(c.names, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if len(c.daemons) == 0 {
		return nil
	}
	return os.WriteFile(filepath.Join(stateDir, "processes"), []byte(strings.Join(c.processLines(), "\n")+"\n"), 0o600)
}

// cleanupLeftovers removes what an earlier run recorded and did not remove.
func cleanupLeftovers() (int, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "namespaces"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range strings.Fields(string(b)) {
		if netns.ValidateName(name) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(netns.RunDir, name)); err == nil {
			n++
		}
		if err := netns.DeleteNamed(name); err != nil {
			return n, err
		}
	}
	return n, os.RemoveAll(stateDir)
}

// teardown deletes every pod through the plugin (as a runtime would),
// stops what runs beside the workers (with --control-plane), and then
// deletes every namespace.
func (c *cluster) teardown(ctx context.Context) {
	for _, w := range c.workers {
		for _, p := range w.pods {
			c.del(ctx, w, p)
		}
	}
	c.stopKube()
	for _, name := range c.names {
		netns.DeleteNamed(name)
	}
	for _, ns := range append([]*netns.NS{c.sw, c.outside}, c.nsOfWorkers()...) {
		if ns != nil {
			ns.Close()
		}
	}
	os.RemoveAll(stateDir)
}

func (c *cluster) nsOfWorkers() []*netns.NS {
	var out []*netns.NS
	for _, w := range c.workers {
		out = append(out, w.ns)
	}
	return out
}

// nth returns the address n of prefix p (p's first address + n).
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// plug joins ns to the switch with a veth: dev inside ns, port on sw0.
func (c *cluster) plug(ns *netns.NS, dev, port string, ip netip.Addr) error {
	if _, err := veth.Create(c.sw, veth.Spec{Name: port, PeerName: dev, PeerNS: ns}); err != nil {
		return err
	}
	if err := bridge.Attach(c.sw, "sw0", port, bridge.PortOptions{}); err != nil {
		return err
	}
	return addr.Ensure(ns, dev, netip.PrefixFrom(ip, c.cfg.nodeNet.Bits()))
}

// build makes the switch, the outside host and the workers with their
// node settings; pods come later.
func (c *cluster) build() error {
	var err error
	if c.sw, err = c.newNS("switch"); err != nil {
		return err
	}
	if _, err := bridge.Ensure(c.sw, bridge.Spec{Name: "sw0"}); err != nil {
		return err
	}
	if c.outside, err = c.newNS("outside"); err != nil {
		return err
	}
	c.outIP = nth(c.cfg.nodeNet, 100)
	if err := c.plug(c.outside, "eth0", "port-outside", c.outIP); err != nil {
		return err
	}
	for i := range c.cfg.nodes {
		w := &worker{name: fmt.Sprintf("worker-%d", i), ip: nth(c.cfg.nodeNet, 20+i)}
		if w.ns, err = c.newNS(w.name); err != nil {
			return err
		}
		if err := c.plug(w.ns, "ens0", fmt.Sprintf("port-w%d", i), w.ip); err != nil {
			return err
		}
		if err := route.SetForwarding(w.ns, route.IPv4, true); err != nil {
			return err
		}
		// Kubernetes requires bridged pod traffic to pass iptables, so
		// that a Service whose endpoint is on the same bridge works.
		if err := bridge.SetNetfilter(w.ns, true); err != nil {
			return err
		}
		w.dataDir = filepath.Join(stateDir, "ipam", w.name)
		c.workers = append(c.workers, w)
	}
	return nil
}

// assignPodCIDRs gives each worker its pod subnet (10.200.N.0/24).
func (c *cluster) assignPodCIDRs() error {
	var names []string
	for _, w := range c.workers {
		names = append(names, w.name)
	}
	subnets, err := nodeSubnets(context.Background(), c.cfg.clusterCIDR, 24, names, stateDir)
	if err != nil {
		return err
	}
	for i, w := range c.workers {
		w.podCIDR = subnets[i]
	}
	return nil
}

// routeNodes programs, on every worker, a route to every other worker's
// pod subnet via that worker (host-gw), and on the outside host, which
// plays the VPC router that knows the pod routes.
func (c *cluster) routeNodes() error {
	for _, w := range c.workers {
		var desired []route.Route
		for _, o := range c.workers {
			if o != w {
				desired = append(desired, route.Route{Dst: o.podCIDR, Gateway: o.ip})
			}
		}
		if _, err := route.Sync(w.ns, route.ProtocolPodnet, desired); err != nil {
			return err
		}
	}
	return c.routeOutside()
}

// routeOutside gives the outside host a route to every pod CIDR via its
// node, as a VPC router has.
func (c *cluster) routeOutside() error {
	var toPods []route.Route
	for _, o := range c.workers {
		toPods = append(toPods, route.Route{Dst: o.podCIDR, Gateway: o.ip})
	}
	_, err := route.Sync(c.outside, route.ProtocolPodnet, toPods)
	return err
}

// nodeRules installs what a node agent adds beside the CNI plugin on real
// clusters: pod-to-pod traffic between nodes exempt from masquerade (as
// ip-masq-agent does: an ACCEPT for cluster destinations ahead of the
// plugin's masquerade jump), and kube-proxy's drop of conntrack-INVALID
// forwarded packets, which also keeps connection tracking on in the node.
func (c *cluster) nodeRules(ctx context.Context) error {
	noMasq := iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "PODNET-CLUSTER-NOMASQ"}
	fwd := iptables.Chain{Family: iptables.IPv4, Table: iptables.TableFilter, Name: "PODNET-CLUSTER-FORWARD"}
	for _, w := range c.workers {
		tx := iptables.NewTransaction().
			Declare(noMasq, iptables.Rule{
				Destination: iptables.Addr{Prefix: c.cfg.clusterCIDR},
				Matches:     []iptables.Match{iptables.Comment("pod to pod: no NAT")},
				Target:      iptables.Accept,
			}).
			EnsureRule(iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "POSTROUTING"}, true,
				iptables.Rule{Source: iptables.Addr{Prefix: c.cfg.clusterCIDR}, Target: iptables.Jump(noMasq.Name)}).
			Declare(fwd, iptables.Rule{
				Matches: []iptables.Match{iptables.Conntrack{States: []string{"INVALID"}}},
				Target:  iptables.Drop,
			}).
			EnsureRule(iptables.Chain{Family: iptables.IPv4, Table: iptables.TableFilter, Name: "FORWARD"}, true,
				iptables.Rule{Target: iptables.Jump(fwd.Name)})
		if err := iptables.NewKernel(w.ns).Run(ctx, tx); err != nil {
			return err
		}
	}
	return nil
}

// netconf is the bridge CNI configuration of Kubernetes The Hard Way for
// worker w.
func (c *cluster) netconf(w *worker) (*libcni.PluginConfig, error) {
	conf := map[string]any{
		"cniVersion":  "1.0.0",
		"name":        "bridge",
		"type":        "podnet-bridge",
		"bridge":      "cnio0",
		"isGateway":   true,
		"ipMasq":      c.cfg.masq,
		"hairpinMode": true, // kubelet's hairpin-veth: a pod can reach itself through its Service
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  []any{[]any{map[string]any{"subnet": w.podCIDR.String()}}},
			"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
			"dataDir": w.dataDir,
		},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	return libcni.NetworkPluginConfFromBytes(b)
}

// addPods creates the pods of every worker through libcni, which runs the
// podnet-bridge binary inside the worker namespace as containerd would.
func (c *cluster) addPods(ctx context.Context) error {
	for _, w := range c.workers {
		conf, err := c.netconf(w)
		if err != nil {
			return err
		}
		for j := range c.cfg.podsPerNode {
			// Ctrl-C stops between pods: a plugin is never killed halfway.
			if err := ctx.Err(); err != nil {
				return errors.New("interrupted")
			}
			p := &pod{name: fmt.Sprintf("%s-pod-%d", w.name, j), worker: w}
			if p.ns, err = c.newNS(p.name); err != nil {
				return err
			}
			p.rt = &libcni.RuntimeConf{ContainerID: p.name, NetNS: p.ns.Path(), IfName: "eth0"}
			var res *current.Result
			err := w.ns.Do(func() error {
				var r types.Result
				var err error
				if w.conflist != nil {
					r, err = c.cni.AddNetworkList(context.WithoutCancel(ctx), w.conflist, p.rt)
				} else {
					r, err = c.cni.AddNetwork(context.WithoutCancel(ctx), conf, p.rt)
				}
				if err != nil {
					return err
				}
				res, err = current.NewResultFromResult(r)
				return err
			})
			if err != nil {
				return fmt.Errorf("CNI ADD %s on %s: %w", p.name, w.name, err)
			}
			p.ip = cni.Addr(res.IPs[0].Address.IP)
			w.pods = append(w.pods, p)
		}
	}
	return nil
}

func (c *cluster) del(ctx context.Context, w *worker, p *pod) error {
	if w.conflist != nil {
		return w.ns.Do(func() error { return c.cni.DelNetworkList(ctx, w.conflist, p.rt) })
	}
	conf, err := c.netconf(w)
	if err != nil {
		return err
	}
	return w.ns.Do(func() error { return c.cni.DelNetwork(ctx, conf, p.rt) })
}
