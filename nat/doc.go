// Package nat holds the NAT rule sets a node programs for its pods, built
// on package iptables: each is a small owned set of chains whose size does
// not grow with the number of pods.
//
//   - NetworkMasquerade: traffic from a network's pod subnets to anywhere
//     else leaves with the node's address (the bridge plugin's ipMasq). One
//     chain per network and family, one POSTROUTING jump per subnet;
//     multicast is excluded. Ensure is cheap when the rules are already
//     there: it reads nf_tables over netlink instead of running iptables.
//     EnsureNftables, CheckNftables and DeleteNftables write the same rule
//     set as native nftables, in ip/ip6 tables of its own
//     ("podnet-masquerade"), for ipMasqBackend "nftables".
//   - HostPorts: CNI port mappings (the portmap plugin's job), with
//     masquerade for hairpin and localhost traffic.
//   - FindRefChains and DeleteRefChains: the reference bridge plugin's
//     per-container CNI-<hash> masquerade chains, for a node moving from it.
//
// Chains are named PREFIX-ROLE… with DefaultPrefix "PODNET", so
// iptables.PrefixOwner(prefix) claims them.
//
// Connection tracking entries, which show these translations, are in
// package conntrack.
package nat
