// Package kube feeds a policy.Enforcer from a Kubernetes API server: the
// v1 Pods (this node's, enforced here, and every other node's, which are
// peers), the v1 Namespaces (their labels) and the networking.k8s.io/v1
// NetworkPolicies, read through client-go shared informers; with
// Config.AdminClient also the AdminNetworkPolicies and
// BaselineAdminNetworkPolicies (policy.networking.k8s.io/v1alpha1) of
// sigs.k8s.io/network-policy-api.
//
// # Use
//
//	e, _ := policy.New(policy.Config{NetNS: ns})
//	src, _ := kube.New(kube.Config{Client: clientset, Enforcer: e, NodeName: node})
//	if err := src.Start(ctx); err != nil { ... } // returns once every object is in the enforcer
//	e.Run(ctx, policy.RunConfig{})
//
// Start returns only when the informers have listed everything and the
// enforcer holds it, so that the first (full) sync isolates pods with all
// their policies at once. While the API server is away the informers
// retry and the enforcer keeps its last rules in force.
//
// # Conversion
//
// ConvertPolicy maps a NetworkPolicy as the API documents it: policyTypes
// default to Ingress, plus Egress when there are egress rules; a peer's
// podSelector and namespaceSelector keep their nil-or-empty meaning
// (absent, or every pod or namespace); a port without a protocol is TCP, a
// string port a named port. ConvertPod skips host-network pods and pods
// that have ended, and takes the named ports of the pod's containers.
// An object the enforcer refuses is logged and counted (Changes); the
// rules in force for it stay.
//
// ConvertAdminPolicy and ConvertBaselinePolicy map the v1alpha1 objects:
// a port's protocol defaults to TCP, a namedPort (which names no
// protocol) matches the name in TCP, UDP and SCTP, a domainNames peer
// matches nothing (it is for Allow rules only, so the policy allows
// less, the API's own fail-closed reading of a peer an implementation
// cannot handle). ConvertNode gives nodes peers a Node's labels and its
// InternalIP and ExternalIP addresses.
//
// # New pods
//
// kubelet reports a pod's addresses (status.podIPs) only after its
// sandbox is ready, so through the API alone a new pod is in the
// enforcer's model only some milliseconds after it could run: isolated
// late (a peer the policies deny reaches it), and absent from its peers'
// rules (a peer that allows it refuses it). AddSandbox closes that
// window: the CNI plugin, in ADD, hands the pod's addresses over
// (package policy/cnisock; Source implements its Handler) and AddSandbox
// returns once a sync holding the pod with them is in force. The pod's
// labels come from the informers' cache, which has the pod already:
// kubelet starts only pods it got from the API server. A pod the cache
// lacks after Config.PodWait is an error, and so the ADD fails and
// kubelet retries; without labels no rule for it would be right.
// DeleteSandbox, the pod's deletion, or status.podIPs naming the same
// addresses end what AddSandbox recorded.
package kube
