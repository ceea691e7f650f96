package policy

import (
	"fmt"
	"net/netip"
	"slices"
)

// This file is the tests' reference: the NetworkPolicy semantics written
// from the networking.k8s.io/v1 API documentation, over the model's
// types, independent of the compiler. Expected truth tables come from
// here, never from what the enforcer did.

// world is a cluster's pods, namespaces and policies.
type world struct {
	pods       []Pod
	namespaces map[string]Namespace
	policies   []Policy
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
func (w *world) allows(p *Pod, d Direction, peer netip.Addr, peerPod *Pod, proto Protocol, port uint16) bool {
	isolated := false
	dstPod := p
	if d == Egress {
		dstPod = peerPod
	}
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
				return true
			}
		}
	}
	return !isolated
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
