// Package podnet is an embeddable SDK for Linux pod networking: the kernel
// plumbing a container runtime, a CNI plugin or a node agent does to give a
// pod its network and to make Services work.
//
// This root package holds only what every other package shares: the
// sentinel errors (ErrNotFound, ErrExist, ErrConflict, ErrInvalid,
// ErrExhausted, ErrNotSupported) and OpError. The work is done in the
// subpackages, one per kernel object family.
//
// # Packages
//
//   - netns: network namespaces — create (anonymous or named like
//     `ip netns add`), open by path or PID, list, identify, and Do, which
//     runs a function on a thread inside a namespace.
//   - netns/nstest: fixtures for privileged tests: throwaway namespaces,
//     a veth-joined pair, and a leak check for TestMain.
//   - veth: veth pairs whose peer is born in the pod's namespace, and
//     resolution of a pod's eth0 to its host-side peer.
//   - link: any interface's state (up, down).
//   - addr: interface addresses (the pod's 10.200.0.4/24 on eth0).
//   - bridge: Linux bridges: ensure, gateway address, ports with hairpin.
//   - route: routes, default routes, forwarding sysctls, and Sync of the
//     routes a program owns (node-to-node pod CIDR routes).
//   - ipam: address ranges and allocators compatible with the reference
//     host-local plugin's files on disk, node subnets and GC.
//   - iptables: typed rules, a parser of iptables-save output, and atomic
//     iptables-restore transactions, with a Fake for unit tests.
//   - nat: masquerade of pod networks in iptables or native nftables (the
//     backend is a value: nat.IPTables, nat.Nftables), and host ports.
//   - conntrack: list and delete connection-tracking flows in any namespace.
//   - service: Services and their endpoints turned into kube-proxy's
//     iptables layout or native nftables tables, synced fully or partially.
//
// The programs under examples/ are built from these packages: the
// podnet-bridge and podnet-host-local CNI plugins, podnet-service-proxy,
// podnet-inspect, and podnet-cluster, a demo that builds a small
// Kubernetes-style cluster (three nodes, pods, two Services) in namespaces.
//
// # Namespaces are explicit
//
// Every function takes the namespace it acts in as a *netns.NS. Netlink
// work uses sockets bound to that namespace; nothing moves the caller's
// thread. See package netns for the one place that switches threads.
//
// # Errors
//
// Errors wrap a sentinel and name the object and the namespace:
//
//	create veth "veth1a2b3c4d" in netns "/var/run/netns/node0": already exists
//
// Test them with errors.Is(err, veth.ErrExist) (or podnet.ErrExist: each
// package re-exports the same values).
package podnet
