// Package addr adds, removes and lists interface addresses in a network
// namespace: the pod's 10.200.0.4/24 on eth0, a node's 10.240.0.20/24.
//
// Every function takes the namespace it acts in; it uses a netlink socket
// opened there and never moves the caller's thread. IPv6 addresses are added
// without duplicate address detection (nodad), so they are usable at once,
// as a pod expects when its CNI ADD returns.
package addr
