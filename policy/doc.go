// Package policy enforces Kubernetes NetworkPolicy (networking.k8s.io/v1)
// on one node with one native nftables table, whose rules depend on the
// policies only: pods, their labels and addresses, namespaces and their
// labels are elements of sets and verdict maps.
//
// An Enforcer keeps a model — Policies, Pods (this node's and the peers
// on other nodes), Namespaces — independent of the Kubernetes API
// (package policy/kube feeds it from client-go informers), and Sync
// writes the difference between the table as written and as the model
// asks, in one nf_tables transaction.
//
//	e, _ := policy.New(policy.Config{NetNS: node})
//	e.UpdateNamespace(policy.Namespace{Name: "x", Labels: ...})
//	e.UpdatePod(policy.Pod{Name: policy.Name{"x", "web"}, IPs: ..., Local: true})
//	e.UpdatePolicy(policy.Policy{Name: ..., Types: policy.Ingress, Ingress: ...})
//	e.Sync(ctx) // or e.Run(ctx, policy.RunConfig{})
//
// # Model
//
// A Policy selects pods of its namespace (PodSelector, a label selector
// with matchLabels and In, NotIn, Exists, DoesNotExist), isolates them in
// the directions of Types (policyTypes), and allows what its Ingress or
// Egress rules match: peers (pod selector, namespace selector, both
// ANDed, or an ipBlock with excepts; none means every peer) and ports
// (TCP, UDP or SCTP; a number, a range to EndPort, a named container
// port, or every port; none means every port). Validate rejects bad input
// with errors matching ErrInvalid that name the object and field; the
// Update methods validate before changing anything.
//
// # Admin and baseline policies
//
// AdminPolicy and BaselinePolicy model AdminNetworkPolicy and
// BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1 of
// sigs.k8s.io/network-policy-api): cluster-wide, selecting pods by
// namespace and pod labels, with ordered rules whose Action is Allow,
// Deny or Pass (baseline: Allow or Deny) and whose peers are namespaces,
// pods or, for egress, networks and nodes (by their labels: the
// addresses of the Nodes given to UpdateNode; a pod's own node is never
// filtered). For a pod in a direction, the admin policies that
// select it apply first, by Priority (lowest first) then name, rules in
// order, the first match deciding: Allow accepts, Deny drops, Pass goes
// on. Then, when a Policy isolates the pod, the Policies decide;
// otherwise the baseline rules in order, and what none matches is
// allowed. The rules of a pod's admin policies are one chain per
// distinct ordered set of them (Pass and the chain's end return), its
// baseline policies one chain each, all reached from the pod's set
// chain; a node without them has the NetworkPolicy table unchanged.
//
// # Semantics
//
// A pod no policy isolates in a direction allows everything in it. An
// isolated pod allows what at least one of its policies allows. A
// connection between two pods needs the source's egress and the
// destination's ingress (each enforced on the node of that pod).
// Replies and established connections pass: a policy that starts to deny
// a connection leaves it alone until it ends (conntrack forgets it) and
// denies the next one — kube-network-policies' default; its strict mode,
// which also cuts established connections, is not built. A pod reaches
// itself (through a Service: hairpin). Traffic between a pod and its own
// node (kubelet probes, the node's addresses) never meets the rules:
// they are in the forward hook only.
//
// # Table
//
// One inet table (DefaultTable, "podnet-policy"): two base chains in the
// forward hook, egress (priority 0) then ingress (1), each accepting ct
// state established,related, then a pod reaching itself, then sending a
// packet from (to) a local isolated pod through a verdict map keyed by
// its address to the chain of its set of policies. Pods isolated by the
// same policies share that chain, which jumps to each policy's chain and
// counts (named counters denied-ingress, denied-egress) and drops what
// none accepted. A policy's chain has one rule per rule and kind of port
// (numbers, names), each reading sets: the peers (an interval set of
// addresses: pods as single addresses, ipBlocks as ranges minus their
// excepts), the ports (protocol . port intervals) and the named ports
// (address . protocol . port of the pods they resolve on: the selected
// pod for ingress, the peer for egress). The first packet of a connection
// meets a fixed number of rules plus its pods' own policies' rules,
// whatever the number of policies on the node.
//
// So a new pod, a relabelled pod or namespace, a pod on another node,
// an address entering an ipBlock are element changes, which nf_tables
// commits without validating the table; a policy's rules changing, or a
// pod bringing a set of policies no pod had, writes rules.
//
// # Bridges
//
// Frames between two ports of one bridge are bridged, not routed: they
// reach the inet forward hook only with br_netfilter's
// net.bridge.bridge-nf-call-iptables (and -ip6tables) set in the node's
// namespace. The first sync sets both (Config.SkipBridgeNetfilter
// leaves them alone, for routed pods) and fails with ErrNotSupported when
// the module is missing.
//
// # Sync
//
// A partial sync writes the difference between two compilations of the
// model: elements, then the chains whose rules changed. A compilation
// compiles again only the policies a change reaches (one whose pods,
// peers, named ports or namespace selectors it touches), so its cost
// follows the change, not the number of pods. A full sync — the
// first, after a failure, after the table was flushed or deleted (the base
// chains are read at every sync), after Verify found a difference, or on
// RequestFullSync — replaces the table in one transaction, keeping the
// denied counts. Verify reads every element and rule back. Cleanup deletes
// the table. WaitSynced returns once every change made before it is in
// force: a CNI ADD uses it (through policy/kube and policy/cnisock) to
// return only when the new pod is isolated and known to its peers. The rules are tested without root against a recorder of the
// batch with a packet tracer, and with real traffic between namespaces.
//
// # Network namespaces
//
// The enforcer writes over a netlink socket opened in Config.NetNS and
// sets the bridge sysctls there; the caller's thread never changes
// namespace.
package policy
