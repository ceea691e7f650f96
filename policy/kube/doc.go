// Package kube feeds a policy.Enforcer from a Kubernetes API server: the
// v1 Pods (this node's, enforced here, and every other node's, which are
// peers), the v1 Namespaces (their labels) and the networking.k8s.io/v1
// NetworkPolicies, read through client-go shared informers.
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
package kube
