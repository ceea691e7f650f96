// Package service turns Kubernetes-style Services and their endpoints into
// kube-proxy's iptables rules, and keeps them in sync — fully at start and
// incrementally afterwards — with the conntrack cleanup UDP Services need.
// It writes rules through package iptables and deletes flows through
// package conntrack; reading Kubernetes objects is the caller's business
// (see examples/service-proxy).
//
// # Model
//
// A Service has cluster IPs, external IPs, ports (name, protocol, port,
// target port, node port), ClientIP session affinity, external and
// internal traffic policies, and Endpoints (address, per-port target,
// ready/serving/terminating, node). Service.Validate rejects bad input with
// errors matching ErrInvalid that name the Service and field.
//
// # Rules
//
// The layout is kube-proxy's; with PREFIX "KUBE" the names are exactly
// kube-proxy's (KUBE-SVC-ERIFXISQEP7F7OF4 for kube-system/kube-dns:dns-tcp),
// with the default "PODNET" the proxy runs beside kube-proxy:
//
//	nat PREROUTING, OUTPUT  -> PREFIX-SERVICES     one rule per cluster/external IP and port, last: LOCAL dst -> PREFIX-NODEPORTS
//	nat PREFIX-NODEPORTS                           one rule per NodePort -> PREFIX-EXT-<hash>
//	nat PREFIX-EXT-<hash>                          mark for masquerade (policy Cluster) -> SVC, or (policy Local) -> SVL
//	nat PREFIX-SVC-<hash>                          masquerade off-cluster sources, affinity (recent), statistic 1/n, 1/(n-1) … 1 -> SEP
//	nat PREFIX-SVL-<hash>                          the same over this node's endpoints
//	nat PREFIX-SEP-<hash>                          mark hairpin traffic, DNAT to the endpoint
//	nat POSTROUTING         -> PREFIX-POSTROUTING  masquerade packets carrying the mark bit (0x4000)
//	filter INPUT, FORWARD, OUTPUT -> PREFIX-SERVICES            REJECT cluster IPs without endpoints
//	filter INPUT, FORWARD         -> PREFIX-EXTERNAL-SERVICES   REJECT/DROP NodePorts and external IPs without (local) endpoints
//	nat, filter PREFIX-PROXY-CANARY                             its disappearance means the tables were flushed
//
// Endpoints that are ready take new connections; serving terminating ones
// only when no endpoint is ready. A Service without endpoints is rejected
// (ICMP port unreachable), never black-holed.
//
// # Sync
//
// Proxy.Update, Delete and Replace change the model; Proxy.Sync writes the
// changes in one iptables.Transaction (one iptables-restore --noflush per
// family). A partial sync rewrites only the chains of changed Services and
// edits the shared chains (SERVICES, NODEPORTS, EXTERNAL-SERVICES) with
// full-spec -I and -D lines, from the proxy's own record of what it wrote:
// it never reads the tables back, so its cost does not grow with the
// number of Services. A full sync — at the first Sync, after a failed one,
// and when the canary chain vanished — rewrites every owned chain, deletes
// stale ones and ensures the jumps from the built-in chains. Each table is
// replaced atomically, and conntrack keeps established connections on
// their endpoint, so neither kind of sync nor a restart of the proxy
// interrupts them.
//
// # Conntrack
//
// After a sync, UDP flows whose replies come from a removed endpoint are
// deleted, and so are the flows of a UDP Service port that went from no
// endpoints to some: otherwise their next datagrams would keep following
// the stale entry (the DNS black hole kube-proxy users know).
//
// # Limits
//
// A partial sync's cost does not grow with the number of Services on the
// proxy's side, but the kernel re-validates every rule reachable from a
// hooked base chain on each commit that adds a rule, so at tens of
// thousands of Services a one-Service change takes a fraction of a second
// whatever writes it. A full sync of 1000 chains or more resets the packet
// counters of the tables it writes (see iptables.Transaction.ZeroCounters).
// docs/performance.md has the figures and the commands that measure them.
//
// # Network namespaces
//
// The proxy acts in Config.NetNS (through iptables.Kernel and a conntrack socket
// opened there); the caller's thread never changes namespace. Tests use a
// iptables.Fake as Config.Backend.
package service
