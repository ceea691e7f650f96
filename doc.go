// Package podnet is an embeddable SDK for Linux pod networking: the kernel
// plumbing a container runtime, a CNI plugin or a node agent does to give a
// pod its network and to make Services work.
//
// This root package holds only what every other package shares: the
// sentinel errors (ErrNotFound, ErrExist, ErrConflict, ErrInvalid,
// ErrExhausted, ErrNotSupported), OpError and Family. The work is done in
// the subpackages, one per concern.
//
// # Packages
//
// Namespaces and links:
//
//   - netns: network namespaces: create (anonymous or named like
//     `ip netns add`), open by path or PID, list, identify, and Do, which
//     runs a function on a thread inside a namespace.
//   - veth: veth pairs whose peer is born in the pod's namespace, and
//     resolution of a pod's eth0 to its host-side peer.
//   - bridge: Linux bridges: ensure, gateway address, ports with hairpin,
//     port state, bridge netfilter.
//   - link: any interface, whatever its type: list, up, down, rename,
//     name validation.
//   - addr: interface addresses (the pod's 10.200.0.4/24 on eth0).
//   - route: routes, default routes, `ip route get`, per-namespace
//     forwarding, and Sync of the routes a program owns (node-to-node pod
//     CIDR routes).
//
// Addresses and CNI:
//
//   - ipam: address ranges, an allocator and stores (in memory, and on disk
//     in the reference host-local plugin's format), node subnets, GC; pure
//     Go, no netlink.
//   - ipam/hostlocal: host-local's CNI verbs (ADD, DEL, CHECK, GC, STATUS)
//     in-process, with its configuration keys and files.
//   - cni: applies a CNI result to a pod's interface and checks it is still
//     there; converts the result's net types to net/netip.
//
// Rules, NAT and flows:
//
//   - iptables: typed rules, a parser of iptables-save output, and atomic
//     iptables-restore transactions of owned chains, on a Kernel or a Fake
//     backend.
//   - nat: masquerade of pod networks on an iptables or native nftables
//     backend passed as a value (nat.IPTables, nat.Nftables), and host
//     ports in iptables.
//   - conntrack: list and delete a namespace's flows (one dump per call,
//     any predicate), flush.
//
// Services:
//
//   - service: Services and their endpoints turned into the node's Service
//     rules, kube-proxy's iptables layout or native nftables tables, synced
//     fully or partially, with UDP conntrack cleanup and a sync runner.
//   - service/kube: client-go informers on Services and EndpointSlices
//     feeding a service.Proxy; Convert of one Service and its slices.
//
// Network policy:
//
//   - policy: Kubernetes NetworkPolicy enforced on one node by one native
//     nftables table whose rules depend on the policies only (pods,
//     labels and namespaces are set and verdict-map elements), synced
//     fully or partially.
//   - policy/kube: client-go informers on Pods, Namespaces and
//     NetworkPolicies feeding a policy.Enforcer.
//
// Programs and tests:
//
//   - daemon: the scaffolding of a node daemon: a context cancelled on
//     SIGINT or SIGTERM, and Prometheus metrics with /healthz and /livez.
//   - netns/nstest: fixtures for privileged tests: throwaway namespaces,
//     a veth-joined pair, and a leak check for TestMain.
//   - netns/nstest/probe: test traffic from inside a namespace: ping, and
//     TCP and UDP exchanges with servers that report the source they saw.
//   - kubetest: a real etcd and kube-apiserver on loopback, for tests of
//     code that follows the Kubernetes API.
//
// The programs under examples/ are built from these packages only, each
// in a directory named after it: the podnet-bridge and podnet-host-local
// CNI plugins (drop-ins for the reference bridge and host-local),
// podnet-service-proxy (a service proxy with kube-proxy's semantics),
// podnet-agent (a node agent: routes between nodes, masquerade, the CNI
// configuration), podnet-inspect (walks one pod's network path),
// podnet-cluster (a demo that builds a small Kubernetes-style cluster in
// namespaces and checks its traffic) and podpair (two pods on a bridge,
// the smallest example).
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
