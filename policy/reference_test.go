package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// This file is the tests' reference: the NetworkPolicy semantics written
// from the networking.k8s.io/v1 API documentation, and those of
// AdminNetworkPolicy and BaselineAdminNetworkPolicy from the
// policy.networking.k8s.io/v1alpha1 API's, over the model's types,
// independent of the compiler. Expected truth tables come from here,
// never from what the enforcer did.

// world is a cluster's pods, namespaces and policies.
type world struct {
	pods       []Pod
	namespaces map[string]Namespace
	policies   []Policy
	admins     []AdminPolicy
	baselines  []BaselinePolicy
	nodes      []Node
	// enforced says which pods' policies are in force: the local ones
	// for one node's table, every pod when each node runs an enforcer.
	enforced func(*Pod) bool
}

func (w *world) podByAddr(a netip.Addr) *Pod {
	for i := range w.pods {
		if slices.Contains(w.pods[i].IPs, a) {
			return &w.pods[i]
		}
	}
	return nil
}

// refAllowed reports whether a new connection from src to dst (an
// address; a pod's when a pod has it) on proto and port is allowed: the
// source pod's egress policies and the destination pod's ingress
// policies must both allow it, a pod that no policy isolates in a
// direction allows everything in it, and a pod reaches itself.
func (w *world) refAllowed(src, dst netip.Addr, proto Protocol, port uint16) bool {
	sp, dp := w.podByAddr(src), w.podByAddr(dst)
	if sp != nil && sp == dp {
		return true
	}
	if sp != nil && w.enforced(sp) && !w.allows(sp, Egress, dst, dp, proto, port) {
		return false
	}
	if dp != nil && w.enforced(dp) && !w.allows(dp, Ingress, src, sp, proto, port) {
		return false
	}
	return true
}

// allows reports whether the policies of pod p let traffic in direction d
// with the peer at address peer (pod peerPod, or nil) through, on proto
// and port. The destination, whose named ports count, is p for ingress
// and the peer for egress.
//
// AdminNetworkPolicies that select p come first, lowest priority first
// (equal priorities by name, the order the enforcer documents), their
// rules in order: the first that matches decides — Allow allows, Deny
// denies, Pass goes on to the NetworkPolicies. When a NetworkPolicy
// isolates p in d, the NetworkPolicies decide; otherwise the
// BaselineAdminNetworkPolicies' rules in order (Allow, Deny), and none
// matching allows.
func (w *world) allows(p *Pod, d Direction, peer netip.Addr, peerPod *Pod, proto Protocol, port uint16) bool {
	dstPod := p
	if d == Egress {
		dstPod = peerPod
	}
	admins := slices.Clone(w.admins)
	slices.SortStableFunc(admins, func(a, b AdminPolicy) int {
		if a.Priority != b.Priority {
			return int(a.Priority - b.Priority)
		}
		return strings.Compare(a.Name, b.Name)
	})
admin:
	for _, a := range admins {
		if !w.subjectSelects(&a.Subject, p) {
			continue
		}
		for _, r := range adminRules(d, a.Ingress, a.Egress) {
			if !w.adminPeersMatch(r.Peers, peer, peerPod) || !portsMatch(r.Ports, dstPod, proto, port) {
				continue
			}
			switch r.Action {
			case Allow:
				return true
			case Deny:
				return false
			case Pass:
				break admin
			}
		}
	}
	if allowed, isolated := w.networkAllows(p, d, peer, peerPod, dstPod, proto, port); isolated {
		return allowed
	}
	baselines := slices.Clone(w.baselines)
	slices.SortFunc(baselines, func(a, b BaselinePolicy) int { return strings.Compare(a.Name, b.Name) })
	for _, b := range baselines {
		if !w.subjectSelects(&b.Subject, p) {
			continue
		}
		for _, r := range adminRules(d, b.Ingress, b.Egress) {
			if w.adminPeersMatch(r.Peers, peer, peerPod) && portsMatch(r.Ports, dstPod, proto, port) {
				return r.Action == Allow
			}
		}
	}
	return true
}

func adminRules(d Direction, ingress, egress []AdminRule) []AdminRule {
	if d == Egress {
		return egress
	}
	return ingress
}

// subjectSelects reports whether an admin or baseline policy's subject
// holds pod p: by its namespace's labels, and its own with a pods subject.
func (w *world) subjectSelects(s *AdminSubject, p *Pod) bool {
	nsl := w.namespaces[p.Namespace].Labels
	if s.Namespaces != nil {
		return s.Namespaces.Matches(nsl)
	}
	return s.Pods.Namespaces.Matches(nsl) && s.Pods.Pods.Matches(p.Labels)
}

// adminPeersMatch reports whether one of an admin rule's peers holds the
// peer at address a (pod, or nil).
func (w *world) adminPeersMatch(peers []AdminPeer, a netip.Addr, pod *Pod) bool {
	for _, pe := range peers {
		switch {
		case pe.Networks != nil:
			if slices.ContainsFunc(pe.Networks, func(n netip.Prefix) bool { return n.Contains(a) }) {
				return true
			}
		case pe.Nodes != nil:
			if slices.ContainsFunc(w.nodes, func(n Node) bool { return pe.Nodes.Matches(n.Labels) && slices.Contains(n.IPs, a) }) {
				return true
			}
		case pod == nil:
		case pe.Namespaces != nil:
			if pe.Namespaces.Matches(w.namespaces[pod.Namespace].Labels) {
				return true
			}
		case pe.Pods != nil:
			if pe.Pods.Namespaces.Matches(w.namespaces[pod.Namespace].Labels) && pe.Pods.Pods.Matches(pod.Labels) {
				return true
			}
		}
	}
	return false
}

// networkAllows reports whether the NetworkPolicies of p isolate it in d
// and, if so, whether one allows the traffic.
func (w *world) networkAllows(p *Pod, d Direction, peer netip.Addr, peerPod, dstPod *Pod, proto Protocol, port uint16) (allowed, isolated bool) {
	for i := range w.policies {
		pol := &w.policies[i]
		if pol.Namespace != p.Namespace || pol.Types&d == 0 || !pol.PodSelector.Matches(p.Labels) {
			continue
		}
		isolated = true
		rules := pol.Ingress
		if d == Egress {
			rules = pol.Egress
		}
		for _, r := range rules {
			if w.peersMatch(pol, r.Peers, peer, peerPod) && portsMatch(r.Ports, dstPod, proto, port) {
				return true, true
			}
		}
	}
	return false, isolated
}

func (w *world) peersMatch(pol *Policy, peers []Peer, a netip.Addr, pod *Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for _, pe := range peers {
		switch {
		case pe.IPBlock != nil:
			if pe.IPBlock.CIDR.Contains(a) && !slices.ContainsFunc(pe.IPBlock.Except, func(e netip.Prefix) bool { return e.Contains(a) }) {
				return true
			}
		case pod == nil:
		case pe.Namespaces == nil:
			if pod.Namespace == pol.Namespace && pe.Pods.Matches(pod.Labels) {
				return true
			}
		default:
			ns := w.namespaces[pod.Namespace]
			if pe.Namespaces.Matches(ns.Labels) && (pe.Pods == nil || pe.Pods.Matches(pod.Labels)) {
				return true
			}
		}
	}
	return false
}

func portsMatch(ports []Port, dst *Pod, proto Protocol, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol.orTCP() != proto {
			continue
		}
		switch {
		case p.Name != "":
			if dst == nil {
				continue
			}
			for _, cp := range dst.Ports {
				if cp.Name == p.Name && cp.Protocol.orTCP() == proto && cp.Port == port {
					return true
				}
			}
		case p.Port == 0:
			return true
		case p.EndPort == 0:
			if port == p.Port {
				return true
			}
		default:
			if p.Port <= port && port <= p.EndPort {
				return true
			}
		}
	}
	return false
}

// Matrix is a truth table: for every source, destination, protocol and
// port, whether a connection is allowed.
type probeKey struct {
	src, dst string // pod names "x/a"
	proto    Protocol
	port     uint16
}

// matrixDiff lists the probes where got and want differ.
func matrixDiff(got, want map[probeKey]bool) []string {
	var out []string
	for k, w := range want {
		if got[k] != w {
			out = append(out, fmt.Sprintf("%s -> %s %s/%d: got %v, want %v", k.src, k.dst, k.proto, k.port, got[k], w))
		}
	}
	slices.Sort(out)
	return out
}
