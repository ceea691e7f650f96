// Package conntrack lists and deletes the connection tracking entries
// (flows) of a network namespace over netfilter netlink, the way the
// conntrack tool does.
//
// A flow holds the original direction of a connection and the reply
// direction the kernel expects, so NAT shows in it: after a DNAT to a pod
// the reply comes from the pod, after a masquerade it goes to the node.
//
//	flows, err := conntrack.List(ctx, node, conntrack.Filter{Protocol: conntrack.UDP, OrigDst: vip}.Match)
//
// List and Delete read the table with one dump per call and select flows
// with a predicate, so a caller with many conditions (a service proxy
// cleaning up after several endpoints) pays one dump, not one per
// condition; Any combines Filters into one predicate.
//
// # Network namespaces
//
// Every call opens its netlink socket inside the namespace it is given;
// the caller's thread never changes namespace.
//
// # Cancellation
//
// A call returns when its context is done: the socket is closed under the
// running request, and the context's error is returned.
package conntrack
