package kube

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/policy"
)

// ConvertPolicy returns the enforcer's model of np. policyTypes default
// as the API documents: Ingress, and Egress when the policy has egress
// rules; rules of a direction the policy does not isolate are dropped (the
// API server keeps them, nobody enforces them). A CIDR that does not
// parse is an error matching ErrInvalid; the result is not validated
// (Enforcer.UpdatePolicy does that).
func ConvertPolicy(np *networkingv1.NetworkPolicy) (policy.Policy, error) {
	name := policy.Name{Namespace: np.Namespace, Name: np.Name}
	p := policy.Policy{Name: name, PodSelector: *selector(&np.Spec.PodSelector)}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.Types |= policy.Ingress
		case networkingv1.PolicyTypeEgress:
			p.Types |= policy.Egress
		}
	}
	if len(np.Spec.PolicyTypes) == 0 {
		p.Types = policy.Ingress
		if len(np.Spec.Egress) > 0 {
			p.Types |= policy.Egress
		}
	}
	bad := func(err error) (policy.Policy, error) {
		return policy.Policy{}, podnet.Invalid("network policy %q: %v", name.String(), err)
	}
	if p.Types&policy.Ingress != 0 {
		for _, r := range np.Spec.Ingress {
			rule, err := convertRule(r.From, r.Ports)
			if err != nil {
				return bad(err)
			}
			p.Ingress = append(p.Ingress, rule)
		}
	}
	if p.Types&policy.Egress != 0 {
		for _, r := range np.Spec.Egress {
			rule, err := convertRule(r.To, r.Ports)
			if err != nil {
				return bad(err)
			}
			p.Egress = append(p.Egress, rule)
		}
	}
	return p, nil
}

func convertRule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (policy.Rule, error) {
	var r policy.Rule
	for _, pe := range peers {
		var out policy.Peer
		if pe.IPBlock != nil {
			cidr, err := netip.ParsePrefix(pe.IPBlock.CIDR)
			if err != nil {
				return r, fmt.Errorf("ipBlock %q: %w", pe.IPBlock.CIDR, err)
			}
			out.IPBlock = &policy.IPBlock{CIDR: cidr}
			for _, e := range pe.IPBlock.Except {
				ex, err := netip.ParsePrefix(e)
				if err != nil {
					return r, fmt.Errorf("ipBlock except %q: %w", e, err)
				}
				out.IPBlock.Except = append(out.IPBlock.Except, ex)
			}
		}
		out.Pods, out.Namespaces = selector(pe.PodSelector), selector(pe.NamespaceSelector)
		r.Peers = append(r.Peers, out)
	}
	for _, p := range ports {
		out := policy.Port{Protocol: policy.TCP}
		if p.Protocol != nil {
			out.Protocol = policy.Protocol(*p.Protocol)
		}
		if p.Port != nil {
			if p.Port.Type == intstr.String {
				out.Name = p.Port.StrVal
			} else if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
				return r, fmt.Errorf("port %d", p.Port.IntVal)
			} else {
				out.Port = uint16(p.Port.IntVal)
			}
		}
		if p.EndPort != nil {
			if *p.EndPort < 1 || *p.EndPort > 65535 {
				return r, fmt.Errorf("endPort %d", *p.EndPort)
			}
			out.EndPort = uint16(*p.EndPort)
		}
		r.Ports = append(r.Ports, out)
	}
	return r, nil
}

// selector returns the model of a label selector; nil for nil.
func selector(s *metav1.LabelSelector) *policy.Selector {
	if s == nil {
		return nil
	}
	out := &policy.Selector{MatchLabels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		out.Expressions = append(out.Expressions, policy.Requirement{Key: e.Key, Operator: policy.Operator(e.Operator), Values: e.Values})
	}
	return out
}

// ConvertPod returns the enforcer's model of pod, local when it runs on
// node. ok is false for pods policies do not apply to: host-network pods
// (their addresses are the node's) and pods that have ended (Succeeded or
// Failed: their addresses may already be another pod's). A pod without
// an address yet is kept (it matters once it has one). Addresses that
// do not parse are an error matching ErrInvalid.
func ConvertPod(pod *corev1.Pod, node string) (p policy.Pod, ok bool, err error) {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return p, false, nil
	}
	p = policy.Pod{Name: policy.Name{Namespace: pod.Namespace, Name: pod.Name}, Labels: pod.Labels, Local: node != "" && pod.Spec.NodeName == node}
	for _, ip := range pod.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			return p, false, podnet.Invalid("pod %q: address %q: %v", p.Name.String(), ip.IP, err)
		}
		p.IPs = append(p.IPs, a)
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name != "" && cp.ContainerPort > 0 && cp.ContainerPort < 65536 {
				p.Ports = append(p.Ports, policy.ContainerPort{Name: cp.Name, Protocol: policy.Protocol(cp.Protocol), Port: uint16(cp.ContainerPort)})
			}
		}
	}
	return p, true, nil
}

// ConvertNamespace returns the enforcer's model of ns: its name and labels
// (the API server sets kubernetes.io/metadata.name).
func ConvertNamespace(ns *corev1.Namespace) policy.Namespace {
	return policy.Namespace{Name: ns.Name, Labels: ns.Labels}
}
