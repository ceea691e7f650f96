// Package veth creates and inspects veth pairs: the virtual cable whose
// one end is a pod's eth0 and whose other end sits in the node's namespace,
// usually on a bridge.
//
// # The peer is born inside the pod
//
// Create asks the kernel to create the peer end directly in the target
// namespace (`ip link add ... type veth peer name eth0 netns POD`), so the
// pod's interface never exists in the node namespace under a name that
// could clash with another pod's, and a failed create leaves nothing.
//
// # Following the cable
//
// By hand, the walk from a pod to its bridge goes through `ethtool -S eth0`
// (peer_ifindex) and `ip link | grep '^IDX:'` on the node. Get returns that
// peer index; Peer resolves it to the link in the node namespace, checking
// the candidate really is the other end (indexes repeat across
// namespaces).
package veth
