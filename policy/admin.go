package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/podnet/podnet"
)

// This file is the model of AdminNetworkPolicy and
// BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1):
// cluster-wide policies evaluated before (admin) and after (baseline)
// the NetworkPolicies of a pod.

// Action is what an admin or baseline rule does with the traffic it
// matches.
type Action string

// The actions of AdminNetworkPolicy rules; a BaselinePolicy has Allow and
// Deny only.
const (
	// Allow accepts the traffic: the stages after this one are not
	// consulted.
	Allow Action = "Allow"
	// Deny drops the traffic.
	Deny Action = "Deny"
	// Pass skips the remaining admin rules: the pod's NetworkPolicies
	// decide, or, when none isolates it, the baseline rules.
	Pass Action = "Pass"
)

// NamespacedPods selects the pods Pods selects in the namespaces
// Namespaces selects; an empty Selector selects every one.
type NamespacedPods struct {
	Namespaces Selector
	Pods       Selector
}

// AdminSubject is the pods an AdminPolicy or a BaselinePolicy applies
// to: every pod of the namespaces Namespaces selects, or the pods Pods
// selects. Exactly one is set.
type AdminSubject struct {
	Namespaces *Selector
	Pods       *NamespacedPods
}

// AdminPeer is one entry of an admin or baseline rule's from (ingress) or
// to (egress) list. Exactly one field is set.
type AdminPeer struct {
	// Namespaces selects every pod of the namespaces it selects.
	Namespaces *Selector
	// Pods selects pods in selected namespaces.
	Pods *NamespacedPods
	// Nodes selects nodes by their labels (egress only): their
	// addresses (Node.IPs). Traffic from a pod to its own node never
	// meets the rules (see the package documentation).
	Nodes *Selector
	// Networks matches the addresses of these prefixes, pods' or not
	// (egress only). Each must be masked (10.0.0.0/8, not 10.0.0.1/8).
	Networks []netip.Prefix
}

// AdminRule is one ingress or egress rule of an AdminPolicy or a
// BaselinePolicy: traffic from (to) any of Peers on any of Ports meets
// Action.
type AdminRule struct {
	// Name names the rule for people; it is not enforced.
	Name   string
	Action Action
	// Peers are the sources (ingress) or destinations (egress); at
	// least one.
	Peers []AdminPeer
	// Ports are the destination ports: a number, a range (Port to
	// EndPort) or a named container port (the destination pod's: the
	// subject's for ingress, the peer's for egress); none means every
	// port.
	Ports []Port
}

// AdminPolicy is an AdminNetworkPolicy: its rules apply to the pods of
// Subject before their NetworkPolicies. Policies apply in the order of
// Priority, lowest first, and of their names where two share a priority
// (which the API leaves undefined); rules in the order written. The first
// rule that matches decides: Allow accepts, Deny drops, Pass hands the
// traffic to the NetworkPolicy stage. A policy without rules in a
// direction does not affect it.
type AdminPolicy struct {
	Name     string
	Priority int32 // 0 to 1000
	Subject  AdminSubject
	Ingress  []AdminRule
	Egress   []AdminRule
}

// BaselinePolicy is a BaselineAdminNetworkPolicy: its rules (Allow or
// Deny) apply, in the order written, to traffic of its Subject's pods in
// a direction no NetworkPolicy isolates them in and no admin rule
// decided. The API allows one, named "default"; more apply in the order
// of their names.
type BaselinePolicy struct {
	Name    string
	Subject AdminSubject
	Ingress []AdminRule
	Egress  []AdminRule
}

// MaxAdminPriority is the largest AdminPolicy priority.
const MaxAdminPriority = 1000

// Validate reports the first problem with p as an error matching
// ErrInvalid that names the policy and the field.
func (p *AdminPolicy) Validate() error {
	what := fmt.Sprintf("admin network policy %q", p.Name)
	if badName(p.Name) {
		return podnet.Invalid("%s: a name is required, without '/', ':', quotes or spaces", what)
	}
	if p.Priority < 0 || p.Priority > MaxAdminPriority {
		return podnet.Invalid("%s: priority %d: want 0 to %d", what, p.Priority, MaxAdminPriority)
	}
	return validateTier(what, &p.Subject, p.Ingress, p.Egress, true)
}

// Validate reports the first problem with p as an error matching
// ErrInvalid that names the policy and the field.
func (p *BaselinePolicy) Validate() error {
	what := fmt.Sprintf("baseline admin network policy %q", p.Name)
	if badName(p.Name) {
		return podnet.Invalid("%s: a name is required, without '/', ':', quotes or spaces", what)
	}
	return validateTier(what, &p.Subject, p.Ingress, p.Egress, false)
}

func validateTier(what string, s *AdminSubject, ingress, egress []AdminRule, pass bool) error {
	if err := s.validate(); err != nil {
		return podnet.Invalid("%s: subject: %v", what, err)
	}
	for _, d := range []Direction{Ingress, Egress} {
		rules := ingress
		if d == Egress {
			rules = egress
		}
		for i, r := range rules {
			if err := r.validate(d, pass); err != nil {
				return podnet.Invalid("%s: %s rule %d: %v", what, dirWord(d), i, err)
			}
		}
	}
	return nil
}

func dirWord(d Direction) string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

func (s *AdminSubject) validate() error {
	switch {
	case (s.Namespaces == nil) == (s.Pods == nil):
		return fmt.Errorf("want exactly one of namespaces and pods")
	case s.Namespaces != nil:
		return s.Namespaces.validate()
	}
	return s.Pods.validate()
}

func (n *NamespacedPods) validate() error {
	if err := n.Namespaces.validate(); err != nil {
		return fmt.Errorf("namespace selector: %v", err)
	}
	if err := n.Pods.validate(); err != nil {
		return fmt.Errorf("pod selector: %v", err)
	}
	return nil
}

func (r *AdminRule) validate(d Direction, pass bool) error {
	switch {
	case r.Action == Allow || r.Action == Deny:
	case r.Action == Pass && pass:
	case pass:
		return fmt.Errorf("action %q: want Allow, Deny or Pass", r.Action)
	default:
		return fmt.Errorf("action %q: want Allow or Deny", r.Action)
	}
	if len(r.Peers) == 0 {
		return fmt.Errorf("no peers")
	}
	addrPeer := false
	for i, pe := range r.Peers {
		if err := pe.validate(d); err != nil {
			return fmt.Errorf("peer %d: %v", i, err)
		}
		addrPeer = addrPeer || pe.Networks != nil || pe.Nodes != nil
	}
	for i, port := range r.Ports {
		if err := port.validate(); err != nil {
			return fmt.Errorf("port %d: %w", i, err)
		}
		if port.Port == 0 && port.Name == "" {
			return fmt.Errorf("port %d: want a number, a range or a name", i)
		}
		if port.Name != "" && addrPeer {
			return fmt.Errorf("port %d: named port %q with a networks or nodes peer (which have no named ports)", i, port.Name)
		}
	}
	return nil
}

func (pe *AdminPeer) validate(d Direction) error {
	set := 0
	for _, b := range []bool{pe.Namespaces != nil, pe.Pods != nil, pe.Nodes != nil, pe.Networks != nil} {
		if b {
			set++
		}
	}
	if set != 1 {
		return fmt.Errorf("want exactly one of namespaces, pods, nodes and networks")
	}
	switch {
	case pe.Namespaces != nil:
		return pe.Namespaces.validate()
	case pe.Pods != nil:
		return pe.Pods.validate()
	case d == Ingress:
		return fmt.Errorf("nodes and networks peers are for egress only")
	case pe.Nodes != nil:
		return pe.Nodes.validate()
	}
	if len(pe.Networks) == 0 {
		return fmt.Errorf("networks: none")
	}
	for _, n := range pe.Networks {
		if !n.IsValid() || n.Addr().Zone() != "" || n.Addr().Is4In6() || n != n.Masked() {
			return fmt.Errorf("networks: %q is not a masked CIDR", n)
		}
	}
	return nil
}

// Node is a node as admin and baseline policies' nodes peers see it: its
// labels and addresses (a Kubernetes Node's InternalIP and ExternalIP
// status.addresses).
type Node struct {
	Name   string
	Labels map[string]string
	IPs    []netip.Addr
}

// Validate reports a node without a name or with a bad address as an
// error matching ErrInvalid.
func (n *Node) Validate() error {
	if badName(n.Name) {
		return podnet.Invalid("node %q: a name is required, without '/', ':', quotes or spaces", n.Name)
	}
	for _, a := range n.IPs {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6() {
			return podnet.Invalid("node %q: address %q is not a unicast address", n.Name, a)
		}
	}
	return nil
}

func (n *Node) clone() *Node {
	c := *n
	c.Labels = cloneLabels(n.Labels)
	c.IPs = slices.Clone(n.IPs)
	return &c
}

// tier tells the stage a policy belongs to.
type tier uint8

const (
	tierNetwork  tier = iota // NetworkPolicy
	tierAdmin                // AdminNetworkPolicy
	tierBaseline             // BaselineAdminNetworkPolicy
)

// tiered is an AdminPolicy or a BaselinePolicy as the compiler reads it:
// its peers as Peers (namespaces and pods peers with a namespace
// selector, networks as ipBlocks), validated and copied.
type tiered struct {
	tier     tier
	name     string
	priority int32
	subject  AdminSubject
	ingress  []Rule
	egress   []Rule
	actions  [2][]Action // by dirIndex
}

// id names a tiered policy's sets and chains; no NetworkPolicy name
// ("namespace/name") can take the same form.
func (t *tiered) id() string {
	if t.tier == tierAdmin {
		return "admin:" + t.name
	}
	return "baseline:" + t.name
}

func (t *tiered) rules(d Direction) []Rule {
	if d == Egress {
		return t.egress
	}
	return t.ingress
}

func dirIndex(d Direction) int {
	if d == Egress {
		return 0
	}
	return 1
}

// selects reports whether t applies to pod p, whose namespace has nsLabels.
func (s *AdminSubject) selects(p *Pod, nsLabels map[string]string) bool {
	if s.Namespaces != nil {
		return s.Namespaces.Matches(nsLabels)
	}
	return s.Pods.Namespaces.Matches(nsLabels) && s.Pods.Pods.Matches(p.Labels)
}

func newTiered(tr tier, name string, priority int32, s AdminSubject, ingress, egress []AdminRule) *tiered {
	t := &tiered{tier: tr, name: name, priority: priority, subject: s.clone()}
	for _, d := range []Direction{Ingress, Egress} {
		src := ingress
		if d == Egress {
			src = egress
		}
		var rules []Rule
		var actions []Action
		for _, r := range src {
			rules = append(rules, r.asRule())
			actions = append(actions, r.Action)
		}
		if d == Egress {
			t.egress = rules
		} else {
			t.ingress = rules
		}
		t.actions[dirIndex(d)] = actions
	}
	return t
}

// asRule returns r's peers and ports as a NetworkPolicy rule's: every
// peer with a namespace selector, networks as ipBlocks.
func (r *AdminRule) asRule() Rule {
	out := Rule{Ports: slices.Clone(r.Ports)}
	for _, pe := range r.Peers {
		switch {
		case pe.Namespaces != nil:
			out.Peers = append(out.Peers, Peer{Namespaces: pe.Namespaces.clone()})
		case pe.Pods != nil:
			out.Peers = append(out.Peers, Peer{Namespaces: pe.Pods.Namespaces.clone(), Pods: pe.Pods.Pods.clone()})
		case pe.Nodes != nil:
			out.Peers = append(out.Peers, Peer{nodes: pe.Nodes.clone()})
		}
		for _, n := range pe.Networks {
			out.Peers = append(out.Peers, Peer{IPBlock: &IPBlock{CIDR: n}})
		}
	}
	return out
}

func (s AdminSubject) clone() AdminSubject {
	c := AdminSubject{Namespaces: s.Namespaces.clone()}
	if s.Pods != nil {
		c.Pods = &NamespacedPods{Namespaces: *s.Pods.Namespaces.clone(), Pods: *s.Pods.Pods.clone()}
	}
	return c
}
