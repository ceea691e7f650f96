package kube

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	anpv1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/policy"
)

// ConvertAdminPolicy returns the enforcer's model of anp
// (policy.networking.k8s.io/v1alpha1). A port's protocol defaults to TCP;
// a namedPort, which names no protocol, becomes that name in each of TCP,
// UDP and SCTP (a pod has one port of a name); a domainNames peer (only
// in Allow rules) matches nothing here, which the API's own rule for
// peers an implementation cannot read makes the safe reading (an Allow
// that matches less); a rule left without peers by that is dropped, as
// it matches nothing. A CIDR that does not parse or a peer with no field
// set is an error matching ErrInvalid; the result is not validated
// (Enforcer.UpdateAdminPolicy does that).
func ConvertAdminPolicy(anp *anpv1alpha1.AdminNetworkPolicy) (policy.AdminPolicy, error) {
	p := policy.AdminPolicy{Name: anp.Name, Priority: anp.Spec.Priority, Subject: subject(&anp.Spec.Subject)}
	var err error
	if p.Ingress, p.Egress, err = convertAdminRules(anp.Spec.Ingress, anp.Spec.Egress); err != nil {
		return policy.AdminPolicy{}, podnet.Invalid("admin network policy %q: %v", anp.Name, err)
	}
	return p, nil
}

// ConvertBaselinePolicy returns the enforcer's model of banp, converted
// as ConvertAdminPolicy converts.
func ConvertBaselinePolicy(banp *anpv1alpha1.BaselineAdminNetworkPolicy) (policy.BaselinePolicy, error) {
	p := policy.BaselinePolicy{Name: banp.Name, Subject: subject(&banp.Spec.Subject)}
	var in []anpv1alpha1.AdminNetworkPolicyIngressRule
	for _, r := range banp.Spec.Ingress {
		in = append(in, anpv1alpha1.AdminNetworkPolicyIngressRule{Name: r.Name, Action: anpv1alpha1.AdminNetworkPolicyRuleAction(r.Action), From: r.From, Ports: r.Ports})
	}
	var out []anpv1alpha1.AdminNetworkPolicyEgressRule
	for _, r := range banp.Spec.Egress {
		er := anpv1alpha1.AdminNetworkPolicyEgressRule{Name: r.Name, Action: anpv1alpha1.AdminNetworkPolicyRuleAction(r.Action), Ports: r.Ports}
		for _, pe := range r.To {
			er.To = append(er.To, anpv1alpha1.AdminNetworkPolicyEgressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods, Nodes: pe.Nodes, Networks: pe.Networks})
		}
		out = append(out, er)
	}
	var err error
	if p.Ingress, p.Egress, err = convertAdminRules(in, out); err != nil {
		return policy.BaselinePolicy{}, podnet.Invalid("baseline admin network policy %q: %v", banp.Name, err)
	}
	return p, nil
}

func convertAdminRules(ingress []anpv1alpha1.AdminNetworkPolicyIngressRule, egress []anpv1alpha1.AdminNetworkPolicyEgressRule) (in, out []policy.AdminRule, err error) {
	for i, r := range ingress {
		rule := policy.AdminRule{Name: r.Name, Action: policy.Action(r.Action)}
		for j, pe := range r.From {
			ape, ok := adminPeer(pe.Namespaces, pe.Pods)
			if !ok {
				return nil, nil, fmt.Errorf("ingress rule %d: peer %d: no field set", i, j)
			}
			rule.Peers = append(rule.Peers, ape)
		}
		if rule.Ports, err = adminPorts(r.Ports); err != nil {
			return nil, nil, fmt.Errorf("ingress rule %d: %v", i, err)
		}
		in = append(in, rule)
	}
	for i, r := range egress {
		rule := policy.AdminRule{Name: r.Name, Action: policy.Action(r.Action)}
		for j, pe := range r.To {
			if len(pe.DomainNames) > 0 && pe.Namespaces == nil && pe.Pods == nil && pe.Nodes == nil && pe.Networks == nil {
				continue // matches nothing here
			}
			ape, ok := adminPeer(pe.Namespaces, pe.Pods)
			switch {
			case pe.Nodes != nil:
				ape.Nodes, ok = selector(pe.Nodes), true
			case pe.Networks != nil:
				ok = true
				for _, c := range pe.Networks {
					n, err := netip.ParsePrefix(string(c))
					if err != nil {
						return nil, nil, fmt.Errorf("egress rule %d: peer %d: network %q: %v", i, j, c, err)
					}
					ape.Networks = append(ape.Networks, n)
				}
			}
			if !ok {
				return nil, nil, fmt.Errorf("egress rule %d: peer %d: no field set", i, j)
			}
			rule.Peers = append(rule.Peers, ape)
		}
		if len(rule.Peers) == 0 && len(r.To) > 0 {
			continue // domain names only: matches nothing
		}
		if rule.Ports, err = adminPorts(r.Ports); err != nil {
			return nil, nil, fmt.Errorf("egress rule %d: %v", i, err)
		}
		out = append(out, rule)
	}
	return in, out, nil
}

func adminPeer(namespaces *metav1.LabelSelector, pods *anpv1alpha1.NamespacedPod) (policy.AdminPeer, bool) {
	switch {
	case namespaces != nil:
		return policy.AdminPeer{Namespaces: selector(namespaces)}, true
	case pods != nil:
		return policy.AdminPeer{Pods: namespacedPods(pods)}, true
	}
	return policy.AdminPeer{}, false
}

func namespacedPods(p *anpv1alpha1.NamespacedPod) *policy.NamespacedPods {
	return &policy.NamespacedPods{Namespaces: *selector(&p.NamespaceSelector), Pods: *selector(&p.PodSelector)}
}

func subject(s *anpv1alpha1.AdminNetworkPolicySubject) policy.AdminSubject {
	var out policy.AdminSubject
	if s.Namespaces != nil {
		out.Namespaces = selector(s.Namespaces)
	}
	if s.Pods != nil {
		out.Pods = namespacedPods(s.Pods)
	}
	return out
}

func adminPorts(ports *[]anpv1alpha1.AdminNetworkPolicyPort) ([]policy.Port, error) {
	if ports == nil {
		return nil, nil
	}
	var out []policy.Port
	for i, p := range *ports {
		switch {
		case p.PortNumber != nil:
			if p.PortNumber.Port < 1 || p.PortNumber.Port > 65535 {
				return nil, fmt.Errorf("port %d: number %d", i, p.PortNumber.Port)
			}
			out = append(out, policy.Port{Protocol: protocol(string(p.PortNumber.Protocol)), Port: uint16(p.PortNumber.Port)})
		case p.PortRange != nil:
			r := p.PortRange
			if r.Start < 1 || r.Start > 65535 || r.End < 1 || r.End > 65535 {
				return nil, fmt.Errorf("port %d: range %d-%d", i, r.Start, r.End)
			}
			out = append(out, policy.Port{Protocol: protocol(string(r.Protocol)), Port: uint16(r.Start), EndPort: uint16(r.End)})
		case p.NamedPort != nil:
			for _, proto := range []policy.Protocol{policy.TCP, policy.UDP, policy.SCTP} {
				out = append(out, policy.Port{Protocol: proto, Name: *p.NamedPort})
			}
		default:
			return nil, fmt.Errorf("port %d: no field set", i)
		}
	}
	return out, nil
}

// ConvertNode returns the enforcer's model of node, which admin and
// baseline policies' nodes peers select: its labels and its InternalIP
// and ExternalIP addresses. An address that does not parse is an error
// matching ErrInvalid.
func ConvertNode(node *corev1.Node) (policy.Node, error) {
	n := policy.Node{Name: node.Name, Labels: node.Labels}
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			return policy.Node{}, podnet.Invalid("node %q: address %q: %v", node.Name, a.Address, err)
		}
		n.IPs = append(n.IPs, ip)
	}
	return n, nil
}

func protocol(p string) policy.Protocol {
	if p == "" {
		return policy.TCP
	}
	return policy.Protocol(p)
}
