package policy

import (
	"net/netip"
	"slices"
)

// This file keeps the model's indexes and what changed since the last
// compilation, so that a compilation reads only what a change touched:
// the chain and sets of a policy (a fragment) are compiled again only when
// the policy changed or a changed pod or namespace could alter them.

// model is what the compiler reads: the enforcer's objects, their
// indexes, and the fragments compiled from them.
type model struct {
	policies   map[Name]*Policy
	pods       map[Name]*Pod
	namespaces map[string]*Namespace

	byNS     map[string]map[Name]*Pod    // pods with an address, by namespace
	local    map[Name]*Pod               // local pods with an address
	addrs    map[netip.Addr]int          // how many pods have each address
	polsByNS map[string]map[Name]*Policy // policies, by namespace
	// admins and baselines are the AdminPolicies and BaselinePolicies,
	// by name.
	admins, baselines map[string]*tiered
	nodes             map[string]*Node // what admin and baseline nodes peers select

	changes changes
	frags   map[fragKey]*ruleset // fragments valid for the model as it is
	// isolation holds, for each local pod, the policies that apply to
	// it, as long as neither it nor its namespace's policies (nor, when
	// there are admin or baseline policies, its namespace's labels or
	// those policies) change; setKeys the hash naming each set of
	// policies.
	isolation map[Name]*stages
	setKeys   map[string]string
}

// stages are the policies that apply to a local pod, by tier and
// direction (dirIndex), each in the order they apply in: admin policies
// by priority, NetworkPolicies, baseline policies.
type stages [3][2][]Name

// changes is what changed since the last compilation: each object's
// version as that compilation saw it (nil when it did not exist).
type changes struct {
	pods       map[Name]*Pod
	namespaces map[string]*Namespace
	policies   map[Name]bool
	tiers      map[fragKey]bool // admin and baseline policies, with d 0
	nodes      map[string]*Node
}

// fragKey names the fragment of one policy in one direction: a
// NetworkPolicy by its name, an admin or baseline policy by Name{"", name}.
type fragKey struct {
	t tier
	n Name
	d Direction
}

// manyChanges is how many changed pods and namespaces make checking each
// fragment against each of them dearer than compiling every fragment
// again.
const manyChanges = 256

func newModel() model {
	return model{policies: map[Name]*Policy{}, pods: map[Name]*Pod{}, namespaces: map[string]*Namespace{},
		byNS: map[string]map[Name]*Pod{}, local: map[Name]*Pod{}, addrs: map[netip.Addr]int{}, polsByNS: map[string]map[Name]*Policy{},
		admins: map[string]*tiered{}, baselines: map[string]*tiered{}, nodes: map[string]*Node{},
		changes: newChanges()}
}

func newChanges() changes {
	return changes{pods: map[Name]*Pod{}, namespaces: map[string]*Namespace{}, policies: map[Name]bool{}, tiers: map[fragKey]bool{}, nodes: map[string]*Node{}}
}

func (m *model) putPolicy(p *Policy) {
	m.changes.policies[p.Name] = true
	m.policies[p.Name] = p
	inner(m.polsByNS, p.Namespace)[p.Name] = p
}

func (m *model) removePolicy(n Name) {
	m.changes.policies[n] = true
	delete(m.policies, n)
	delete(m.polsByNS[n.Namespace], n)
}

// tierMap returns the admin or baseline policies, as t says.
func (m *model) tierMap(t tier) map[string]*tiered {
	if t == tierAdmin {
		return m.admins
	}
	return m.baselines
}

func (m *model) putTiered(t *tiered) {
	m.changes.tiers[fragKey{t: t.tier, n: Name{Name: t.name}}] = true
	m.tierMap(t.tier)[t.name] = t
}

func (m *model) removeTiered(t tier, name string) {
	m.changes.tiers[fragKey{t: t, n: Name{Name: name}}] = true
	delete(m.tierMap(t), name)
}

func (m *model) putNode(n *Node) {
	m.noteNode(n.Name)
	m.nodes[n.Name] = n
}

func (m *model) removeNode(name string) {
	m.noteNode(name)
	delete(m.nodes, name)
}

func (m *model) noteNode(name string) {
	if _, seen := m.changes.nodes[name]; !seen {
		m.changes.nodes[name] = m.nodes[name]
	}
}

func (m *model) putPod(p *Pod) {
	m.notePod(p.Name)
	m.unindexPod(p.Name)
	m.pods[p.Name] = p
	if len(p.IPs) == 0 {
		return
	}
	inner(m.byNS, p.Namespace)[p.Name] = p
	if p.Local {
		m.local[p.Name] = p
	}
	for _, a := range p.IPs {
		m.addrs[a]++
	}
}

func (m *model) removePod(n Name) {
	if _, ok := m.pods[n]; !ok {
		return
	}
	m.notePod(n)
	m.unindexPod(n)
	delete(m.pods, n)
}

// notePod records the version of pod n the last compilation saw, at its
// first change since.
func (m *model) notePod(n Name) {
	if _, seen := m.changes.pods[n]; !seen {
		m.changes.pods[n] = m.pods[n]
	}
}

func (m *model) unindexPod(n Name) {
	if p := m.byNS[n.Namespace][n]; p != nil {
		for _, a := range p.IPs {
			if m.addrs[a]--; m.addrs[a] <= 0 {
				delete(m.addrs, a)
			}
		}
	}
	delete(m.byNS[n.Namespace], n)
	if len(m.byNS[n.Namespace]) == 0 {
		delete(m.byNS, n.Namespace)
	}
	delete(m.local, n)
}

func (m *model) putNamespace(n *Namespace) {
	m.noteNamespace(n.Name)
	m.namespaces[n.Name] = n
}

func (m *model) removeNamespace(name string) {
	m.noteNamespace(name)
	delete(m.namespaces, name)
}

func (m *model) noteNamespace(name string) {
	if _, seen := m.changes.namespaces[name]; !seen {
		m.changes.namespaces[name] = m.namespaces[name]
	}
}

func inner[K comparable, V any](m map[string]map[K]V, k string) map[K]V {
	if m[k] == nil {
		m[k] = map[K]V{}
	}
	return m[k]
}

func (m *model) nsLabels(name string) map[string]string {
	if n := m.namespaces[name]; n != nil {
		return n.Labels
	}
	return nil
}

// invalidate forgets the fragments the changes since the last
// compilation may have altered, and the changes.
func (m *model) invalidate() {
	ch := m.changes
	m.changes = newChanges()
	if len(ch.pods)+len(ch.namespaces)+len(ch.nodes) > manyChanges {
		m.frags = nil
	}
	if m.frags == nil {
		m.frags, m.isolation, m.setKeys = map[fragKey]*ruleset{}, map[Name]*stages{}, map[string]string{}
		return
	}
	for n := range ch.pods {
		delete(m.isolation, n)
	}
	for n := range ch.policies {
		delete(m.frags, fragKey{n: n, d: Ingress})
		delete(m.frags, fragKey{n: n, d: Egress})
		for pn := range m.isolation {
			if pn.Namespace == n.Namespace {
				delete(m.isolation, pn)
			}
		}
	}
	for k := range ch.tiers {
		delete(m.frags, fragKey{k.t, k.n, Ingress})
		delete(m.frags, fragKey{k.t, k.n, Egress})
	}
	if len(ch.tiers) > 0 {
		clear(m.isolation) // an admin policy's subject may select any pod
	}
	if len(m.admins)+len(m.baselines) > 0 {
		for ns := range ch.namespaces { // which select pods by their namespace's labels
			for pn := range m.byNS[ns] {
				delete(m.isolation, pn)
			}
		}
	}
	for k := range m.frags {
		o := m.owner(k)
		if m.podsAlter(o, k.d, ch.pods) || m.namespacesAlter(o, k.d, ch.namespaces) || m.nodesAlter(o, k.d, ch.nodes) {
			delete(m.frags, k)
		}
	}
}

// owner is what compiling a policy's rules, and telling which changes
// alter them, reads of the policy, whatever its tier.
type owner struct {
	id  string  // names the policy's sets; its rules' comment
	ns  string  // of peers without a namespace selector: a NetworkPolicy's namespace
	pol *Policy // a NetworkPolicy, or
	t   *tiered // an admin or baseline policy
}

func (m *model) owner(k fragKey) owner {
	if k.t == tierNetwork {
		pol := m.policies[k.n]
		return owner{id: pol.Name.String(), ns: pol.Namespace, pol: pol}
	}
	t := m.tierMap(k.t)[k.n.Name]
	return owner{id: t.id(), t: t}
}

func (o owner) rules(d Direction) []Rule {
	if o.pol != nil {
		return o.pol.rules(d)
	}
	return o.t.rules(d)
}

// selects reports whether the policy applies to pod p.
func (o owner) selects(m *model, p *Pod) bool {
	if o.pol != nil {
		return p.Namespace == o.pol.Namespace && o.pol.PodSelector.Matches(p.Labels)
	}
	return o.t.subject.selects(p, m.nsLabels(p.Namespace))
}

// podsAlter reports whether a pod that changed, in its old or its new
// version, could alter pol's fragment in d.
func (m *model) podsAlter(o owner, d Direction, pods map[Name]*Pod) bool {
	for n, old := range pods {
		if m.podAlters(o, d, old, 0) || m.podAlters(o, d, m.pods[n], 1) {
			return true
		}
	}
	return false
}

// podAlters reports whether pod version v (nil: none) is read by pol's
// fragment in d: as a peer its selectors match, as a pod a named port
// resolves on (the selected local pods for ingress, the peers for
// egress: pods in an egress ipBlock, or at the address of a peer —
// another pod at one of v's addresses, self being how many of those
// pods v itself is — included).
func (m *model) podAlters(o owner, d Direction, v *Pod, self int) bool {
	if v == nil || len(v.IPs) == 0 {
		return false
	}
	for _, r := range o.rules(d) {
		named := slices.ContainsFunc(r.Ports, func(p Port) bool { return p.Name != "" })
		switch {
		case named && d == Egress && len(r.Peers) == 0:
			return true
		case named && d == Ingress && v.Local && o.selects(m, v):
			return true
		case named && d == Egress && slices.ContainsFunc(v.IPs, func(a netip.Addr) bool { return m.addrs[a] > self }):
			return true
		}
		for i := range r.Peers {
			pe := &r.Peers[i]
			if pe.nodes != nil {
				continue // nodesAlter's
			}
			if pe.IPBlock != nil {
				if named && d == Egress && slices.ContainsFunc(v.IPs, pe.IPBlock.CIDR.Contains) {
					return true
				}
				continue
			}
			if m.peerMatches(o.ns, pe, v) {
				return true
			}
		}
	}
	return false
}

// peerMatches reports whether pod p is one of the pods peer pe selects
// (in namespace ns when pe has no namespace selector), with its
// namespace's labels as they are now.
func (m *model) peerMatches(ns string, pe *Peer, p *Pod) bool {
	if pe.Namespaces == nil {
		if p.Namespace != ns {
			return false
		}
	} else if !pe.Namespaces.Matches(m.nsLabels(p.Namespace)) {
		return false
	}
	return pe.Pods == nil || pe.Pods.Matches(p.Labels)
}

// nodesAlter reports whether a node that changed, in its old or its new
// version, is one a nodes peer of the policy's rules in d selects.
func (m *model) nodesAlter(o owner, d Direction, nodes map[string]*Node) bool {
	for name, old := range nodes {
		for _, r := range o.rules(d) {
			for _, pe := range r.Peers {
				if pe.nodes == nil {
					continue
				}
				if (old != nil && pe.nodes.Matches(old.Labels)) || (m.nodes[name] != nil && pe.nodes.Matches(m.nodes[name].Labels)) {
					return true
				}
			}
		}
	}
	return false
}

// namespacesAlter reports whether a namespace whose labels changed moved
// into or out of a namespace selector of the policy's peers in d, or, for
// an admin or baseline policy with ingress named ports (which resolve on
// its subject's pods), of its subject's.
func (m *model) namespacesAlter(o owner, d Direction, nss map[string]*Namespace) bool {
	for name, old := range nss {
		var oldLabels map[string]string
		if old != nil {
			oldLabels = old.Labels
		}
		newLabels := m.nsLabels(name)
		for _, r := range o.rules(d) {
			for _, pe := range r.Peers {
				if pe.Namespaces != nil && pe.Namespaces.Matches(oldLabels) != pe.Namespaces.Matches(newLabels) {
					return true
				}
			}
			if o.t != nil && d == Ingress && slices.ContainsFunc(r.Ports, func(p Port) bool { return p.Name != "" }) {
				s := o.t.subject.Namespaces
				if s == nil {
					s = &o.t.subject.Pods.Namespaces
				}
				if s.Matches(oldLabels) != s.Matches(newLabels) {
					return true
				}
			}
		}
	}
	return false
}

// rules returns p's rules in d.
func (p *Policy) rules(d Direction) []Rule {
	if d == Egress {
		return p.Egress
	}
	return p.Ingress
}
