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

	changes changes
	frags   map[fragKey]*ruleset // fragments valid for the model as it is
	// isolation holds, for each local pod, the policies that isolate it
	// (egress, ingress), as long as neither it nor its namespace's
	// policies change; setKeys the hash naming each set of policies.
	isolation map[Name]*[2][]Name
	setKeys   map[string]string
}

// changes is what changed since the last compilation: each object's
// version as that compilation saw it (nil when it did not exist).
type changes struct {
	pods       map[Name]*Pod
	namespaces map[string]*Namespace
	policies   map[Name]bool
}

// fragKey names the fragment of one policy in one direction.
type fragKey struct {
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
		changes: newChanges()}
}

func newChanges() changes {
	return changes{pods: map[Name]*Pod{}, namespaces: map[string]*Namespace{}, policies: map[Name]bool{}}
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
	if len(ch.pods)+len(ch.namespaces) > manyChanges {
		m.frags = nil
	}
	if m.frags == nil {
		m.frags, m.isolation, m.setKeys = map[fragKey]*ruleset{}, map[Name]*[2][]Name{}, map[string]string{}
		return
	}
	for n := range ch.pods {
		delete(m.isolation, n)
	}
	for n := range ch.policies {
		delete(m.frags, fragKey{n, Ingress})
		delete(m.frags, fragKey{n, Egress})
		for pn := range m.isolation {
			if pn.Namespace == n.Namespace {
				delete(m.isolation, pn)
			}
		}
	}
	for k := range m.frags {
		pol := m.policies[k.n]
		if m.podsAlter(pol, k.d, ch.pods) || m.namespacesAlter(pol, k.d, ch.namespaces) {
			delete(m.frags, k)
		}
	}
}

// podsAlter reports whether a pod that changed, in its old or its new
// version, could alter pol's fragment in d.
func (m *model) podsAlter(pol *Policy, d Direction, pods map[Name]*Pod) bool {
	for n, old := range pods {
		if m.podAlters(pol, d, old, 0) || m.podAlters(pol, d, m.pods[n], 1) {
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
func (m *model) podAlters(pol *Policy, d Direction, v *Pod, self int) bool {
	if v == nil || len(v.IPs) == 0 {
		return false
	}
	for _, r := range pol.rules(d) {
		named := slices.ContainsFunc(r.Ports, func(p Port) bool { return p.Name != "" })
		switch {
		case named && d == Egress && len(r.Peers) == 0:
			return true
		case named && d == Ingress && v.Local && v.Namespace == pol.Namespace && pol.PodSelector.Matches(v.Labels):
			return true
		case named && d == Egress && slices.ContainsFunc(v.IPs, func(a netip.Addr) bool { return m.addrs[a] > self }):
			return true
		}
		for i := range r.Peers {
			pe := &r.Peers[i]
			if pe.IPBlock != nil {
				if named && d == Egress && slices.ContainsFunc(v.IPs, pe.IPBlock.CIDR.Contains) {
					return true
				}
				continue
			}
			if m.peerMatches(pol, pe, v) {
				return true
			}
		}
	}
	return false
}

// peerMatches reports whether pod p is one of the pods peer pe of pol
// selects, with its namespace's labels as they are now.
func (m *model) peerMatches(pol *Policy, pe *Peer, p *Pod) bool {
	if pe.Namespaces == nil {
		if p.Namespace != pol.Namespace {
			return false
		}
	} else if !pe.Namespaces.Matches(m.nsLabels(p.Namespace)) {
		return false
	}
	return pe.Pods == nil || pe.Pods.Matches(p.Labels)
}

// namespacesAlter reports whether a namespace whose labels changed moved
// into or out of a namespace selector of pol's peers in d.
func (m *model) namespacesAlter(pol *Policy, d Direction, nss map[string]*Namespace) bool {
	for name, old := range nss {
		var oldLabels map[string]string
		if old != nil {
			oldLabels = old.Labels
		}
		newLabels := m.nsLabels(name)
		for _, r := range pol.rules(d) {
			for _, pe := range r.Peers {
				if pe.Namespaces != nil && pe.Namespaces.Matches(oldLabels) != pe.Namespaces.Matches(newLabels) {
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
