// Package nat programs the NAT a node does for its pods: masquerade of pod
// networks, in iptables or in native nftables, and host ports, in
// iptables. Each is a small rule set the package owns, whose size does not
// grow with the number of pods.
//
// # Masquerade
//
// NetworkMasquerade describes one network's masquerade (the bridge
// plugin's ipMasq): traffic from its pod subnets to anywhere else leaves
// with the node's address, except multicast and the Exempt destinations.
// It is one chain per network and family and one jump per subnet from the
// nat postrouting hook.
//
// Ensure, Check and Delete take the Backend that holds the rules, picked
// once by the program:
//
//   - IPTables(b) keeps them in the nat table of an iptables.Backend: an
//     iptables.Kernel for a namespace (iptables-nft or iptables-legacy),
//     changed in one iptables-restore transaction, or an iptables.Fake in
//     unit tests. On iptables-nft, Ensure of a complete rule set reads
//     nf_tables over netlink and runs no iptables at all.
//   - Nftables(ns) keeps them in native nftables tables of their own, ip
//     and ip6 "podnet-masquerade", written over netlink in one batch
//     (ipMasqBackend "nftables").
//
// # Host ports
//
// HostPorts implements CNI port mappings (the portmap plugin's job) in
// iptables, with masquerade for hairpin and localhost traffic; it takes an
// iptables.Backend directly, as it has no nftables form.
//
// # Names
//
// iptables chains are named PREFIX-ROLE… with DefaultPrefix "PODNET", so
// iptables.PrefixOwner(prefix) claims them; the nftables tables are the
// prefix in lower case and "-masquerade".
//
// Connection tracking entries, which show these translations, are in
// package conntrack.
package nat
