package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/podnet/podnet"
)

// Re-exported sentinels; see package podnet.
var (
	ErrInvalid      = podnet.ErrInvalid
	ErrNotSupported = podnet.ErrNotSupported
)

// Protocol is a port's protocol, spelled as Kubernetes spells it.
type Protocol string

// The protocols a NetworkPolicy port may name.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

func (p Protocol) orTCP() Protocol {
	if p == "" {
		return TCP
	}
	return p
}

func (p Protocol) valid() bool {
	switch p.orTCP() {
	case TCP, UDP, SCTP:
		return true
	}
	return false
}

// Direction is a set of traffic directions: Ingress, Egress or both
// (Ingress|Egress), as a NetworkPolicy's policyTypes list them.
type Direction uint8

// The two directions.
const (
	// Ingress is traffic to the pods a policy selects.
	Ingress Direction = 1 << iota
	// Egress is traffic from them.
	Egress
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "Ingress"
	case Egress:
		return "Egress"
	case Ingress | Egress:
		return "Ingress|Egress"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// Name identifies a namespaced object: a Policy or a Pod.
type Name struct {
	Namespace, Name string
}

// String returns "namespace/name".
func (n Name) String() string { return n.Namespace + "/" + n.Name }

func (n Name) compare(o Name) int {
	if c := strings.Compare(n.Namespace, o.Namespace); c != 0 {
		return c
	}
	return strings.Compare(n.Name, o.Name)
}

// Operator is a selector requirement's operator.
type Operator string

// The operators of a Kubernetes label selector.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one matchExpressions entry of a label selector.
type Requirement struct {
	Key      string
	Operator Operator
	Values   []string // one or more for In and NotIn, none otherwise
}

// Selector selects objects by their labels as a Kubernetes LabelSelector
// does: every MatchLabels pair and every Requirement must hold. The zero
// Selector selects everything.
type Selector struct {
	MatchLabels map[string]string
	Expressions []Requirement
}

// Matches reports whether labels satisfy s.
func (s *Selector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.Expressions {
		v, has := labels[r.Key]
		switch r.Operator {
		case OpIn:
			if !has || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if has && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !has {
				return false
			}
		case OpDoesNotExist:
			if has {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func (s *Selector) validate() error {
	for k := range s.MatchLabels {
		if k == "" {
			return fmt.Errorf("empty label key")
		}
	}
	for _, r := range s.Expressions {
		if r.Key == "" {
			return fmt.Errorf("requirement with an empty key")
		}
		switch r.Operator {
		case OpIn, OpNotIn:
			if len(r.Values) == 0 {
				return fmt.Errorf("requirement %s %s without values", r.Key, r.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(r.Values) != 0 {
				return fmt.Errorf("requirement %s %s with values", r.Key, r.Operator)
			}
		default:
			return fmt.Errorf("requirement %s: operator %q: want In, NotIn, Exists or DoesNotExist", r.Key, r.Operator)
		}
	}
	return nil
}

func (s *Selector) clone() *Selector {
	if s == nil {
		return nil
	}
	c := &Selector{MatchLabels: maps.Clone(s.MatchLabels), Expressions: slices.Clone(s.Expressions)}
	for i := range c.Expressions {
		c.Expressions[i].Values = slices.Clone(s.Expressions[i].Values)
	}
	return c
}

// IPBlock is a range of addresses: those in CIDR and in none of Except.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix // each inside CIDR, of its family
}

// Peer is one entry of a rule's from (ingress) or to (egress) list. It
// is either a selection of pods (Pods, Namespaces or both) or an
// IPBlock.
type Peer struct {
	// Pods selects pods: in the policy's namespace when Namespaces is
	// nil, else in the namespaces Namespaces selects (both must hold).
	Pods *Selector
	// Namespaces selects namespaces; with Pods nil, every pod in them.
	Namespaces *Selector
	// IPBlock matches addresses, pods' or not.
	IPBlock *IPBlock

	// nodes, in an admin or baseline policy's rule, selects nodes: their
	// addresses.
	nodes *Selector
}

// Port is one entry of a rule's ports: a protocol with a port number, a
// range (Port to EndPort), a named container port, or every port (Port 0
// and Name "").
type Port struct {
	Protocol Protocol // "" means TCP
	Port     uint16   // 0 with Name "": every port of Protocol
	// Name is a container port name, resolved per pod: the destination
	// pod's port of that name and protocol (the selected pod's for
	// ingress, the peer's for egress).
	Name string
	// EndPort, with Port, makes the range Port-EndPort.
	EndPort uint16
}

// Rule is one ingress or egress rule: traffic to (or from) any of Peers
// on any of Ports. No peers means every peer, no ports every port.
type Rule struct {
	Peers []Peer
	Ports []Port
}

// Policy is a NetworkPolicy: it isolates the pods of its namespace that
// PodSelector selects, in the directions of Types, and allows the
// traffic its rules match. Traffic a pod's policies together do not allow
// in an isolated direction is dropped.
type Policy struct {
	Name
	PodSelector Selector
	// Types are the directions the policy isolates its pods in
	// (policyTypes): Ingress, Egress or Ingress|Egress. Required.
	Types   Direction
	Ingress []Rule // only with Ingress in Types; none denies every ingress
	Egress  []Rule // only with Egress in Types
}

// ContainerPort is a named port of a pod's containers: what a policy's
// named Port resolves to.
type ContainerPort struct {
	Name     string
	Protocol Protocol // "" means TCP
	Port     uint16
}

// Pod is a pod as policies see it.
type Pod struct {
	Name
	Labels map[string]string
	IPs    []netip.Addr // at most one per family; a pod without one is ignored
	Ports  []ContainerPort
	// Local says the pod runs on this node: its ingress and egress are
	// enforced here. Pods on other nodes matter as peers.
	Local bool
}

// Namespace is a namespace as policies see it. The API server labels
// every namespace kubernetes.io/metadata.name=NAME; a caller that builds
// Namespaces by hand must add that label for selectors that use it.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// badName reports whether s cannot be a Kubernetes object name.
func badName(s string) bool {
	return s == "" || len(s) > 253 || strings.ContainsAny(s, "/: \"'\\\n\t")
}

// Validate reports the first problem with p as an error matching
// ErrInvalid that names the policy and the field.
func (p *Policy) Validate() error {
	if badName(p.Namespace) || badName(p.Name.Name) {
		return podnet.Invalid("network policy %q: namespace and name are required, without '/', ':', quotes or spaces", p.Name.String())
	}
	bad := func(format string, a ...any) error {
		return podnet.Invalid("network policy %q: %s", p.Name.String(), fmt.Sprintf(format, a...))
	}
	if p.Types == 0 || p.Types&^(Ingress|Egress) != 0 {
		return bad("types %v: want Ingress, Egress or both", p.Types)
	}
	if err := p.PodSelector.validate(); err != nil {
		return bad("pod selector: %v", err)
	}
	if len(p.Ingress) > 0 && p.Types&Ingress == 0 {
		return bad("ingress rules without Ingress in Types")
	}
	if len(p.Egress) > 0 && p.Types&Egress == 0 {
		return bad("egress rules without Egress in Types")
	}
	for d, rules := range map[string][]Rule{"ingress": p.Ingress, "egress": p.Egress} {
		for i, r := range rules {
			if err := r.validate(); err != nil {
				return bad("%s rule %d: %v", d, i, err)
			}
		}
	}
	return nil
}

func (r *Rule) validate() error {
	for i, peer := range r.Peers {
		if err := peer.validate(); err != nil {
			return fmt.Errorf("peer %d: %w", i, err)
		}
	}
	for i, port := range r.Ports {
		if err := port.validate(); err != nil {
			return fmt.Errorf("port %d: %w", i, err)
		}
	}
	return nil
}

func (p *Peer) validate() error {
	if p.IPBlock != nil {
		if p.Pods != nil || p.Namespaces != nil {
			return fmt.Errorf("an ipBlock with a pod or namespace selector")
		}
		return p.IPBlock.validate()
	}
	if p.Pods == nil && p.Namespaces == nil {
		return fmt.Errorf("no pod selector, namespace selector or ipBlock")
	}
	for _, s := range []*Selector{p.Pods, p.Namespaces} {
		if s != nil {
			if err := s.validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *IPBlock) validate() error {
	if !b.CIDR.IsValid() || b.CIDR.Addr().Zone() != "" {
		return fmt.Errorf("ipBlock: invalid CIDR %q", b.CIDR)
	}
	c := b.CIDR.Masked()
	for _, e := range b.Except {
		if !e.IsValid() || e.Addr().Is4() != c.Addr().Is4() || e.Bits() < c.Bits() || !c.Contains(e.Addr()) {
			return fmt.Errorf("ipBlock %s: except %s is not inside it", c, e)
		}
	}
	return nil
}

func (p *Port) validate() error {
	if !p.Protocol.valid() {
		return fmt.Errorf("protocol %q: want TCP, UDP or SCTP", p.Protocol)
	}
	switch {
	case p.Name != "" && (p.Port != 0 || p.EndPort != 0):
		return fmt.Errorf("named port %q with a number", p.Name)
	case p.Name != "" && (len(p.Name) > 15 || strings.ContainsAny(p.Name, " /:\"'\\")):
		return fmt.Errorf("port name %q: not a container port name", p.Name)
	case p.EndPort != 0 && p.Port == 0:
		return fmt.Errorf("endPort %d without a port", p.EndPort)
	case p.EndPort != 0 && p.EndPort < p.Port:
		return fmt.Errorf("endPort %d below port %d", p.EndPort, p.Port)
	}
	return nil
}

// Validate reports the first problem with p as an error matching
// ErrInvalid that names the pod and the field.
func (p *Pod) Validate() error {
	if badName(p.Namespace) || badName(p.Name.Name) {
		return podnet.Invalid("pod %q: namespace and name are required, without '/', ':', quotes or spaces", p.Name.String())
	}
	bad := func(format string, a ...any) error {
		return podnet.Invalid("pod %q: %s", p.Name.String(), fmt.Sprintf(format, a...))
	}
	fams := map[podnet.Family]bool{}
	for _, a := range p.IPs {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6() {
			return bad("address %q is not a unicast address", a)
		}
		f := podnet.FamilyOf(a)
		if fams[f] {
			return bad("two %v addresses", f)
		}
		fams[f] = true
	}
	for i, cp := range p.Ports {
		if cp.Name == "" || cp.Port == 0 || !cp.Protocol.valid() {
			return bad("container port %d: want a name, a protocol TCP, UDP or SCTP and a port", i)
		}
	}
	return nil
}

// Validate reports a namespace without a name as an error matching
// ErrInvalid.
func (n *Namespace) Validate() error {
	if badName(n.Name) {
		return podnet.Invalid("namespace %q: a name is required, without '/', ':', quotes or spaces", n.Name)
	}
	return nil
}

// port returns the pod's container port named name of protocol proto.
func (p *Pod) port(name string, proto Protocol) (uint16, bool) {
	for _, cp := range p.Ports {
		if cp.Name == name && cp.Protocol.orTCP() == proto.orTCP() {
			return cp.Port, true
		}
	}
	return 0, false
}

// addr returns the pod's address of family f.
func (p *Pod) addr(f podnet.Family) (netip.Addr, bool) {
	for _, a := range p.IPs {
		if podnet.FamilyOf(a) == f {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (p *Policy) clone() *Policy {
	c := *p
	c.PodSelector = *p.PodSelector.clone()
	c.Ingress = cloneRules(p.Ingress)
	c.Egress = cloneRules(p.Egress)
	return &c
}

func cloneRules(rs []Rule) []Rule {
	out := slices.Clone(rs)
	for i := range out {
		out[i].Ports = slices.Clone(rs[i].Ports)
		out[i].Peers = slices.Clone(rs[i].Peers)
		for j := range out[i].Peers {
			pe := &out[i].Peers[j]
			pe.Pods, pe.Namespaces = pe.Pods.clone(), pe.Namespaces.clone()
			if pe.IPBlock != nil {
				b := *pe.IPBlock
				b.Except = slices.Clone(b.Except)
				pe.IPBlock = &b
			}
		}
	}
	return out
}

func (p *Pod) clone() *Pod {
	c := *p
	c.Labels = maps.Clone(p.Labels)
	c.IPs = slices.Clone(p.IPs)
	c.Ports = slices.Clone(p.Ports)
	return &c
}
