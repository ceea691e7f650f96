// Package service turns Kubernetes-style Services and their endpoints into
// the node's Service rules, and keeps them in sync — fully at start and
// incrementally afterwards — with the conntrack cleanup UDP Services need.
//
// A Proxy is a mode-neutral core (the model, validation, change tracking,
// the full/partial decision, the sync runner, conntrack cleanup decided
// from the Services before and after) writing through one of two
// Backends, each keeping its own record of what it wrote:
//
//	service.New(service.Config{Backend: service.Nftables(ns)})                      // native nftables tables over netlink
//	service.New(service.Config{Backend: service.IPTables(iptables.NewKernel(ns))})  // kube-proxy's iptables layout
//	service.New(service.Config{Backend: service.IPTables(iptables.NewFake())})      // unit tests
//
// Flows are deleted through package conntrack; reading Kubernetes objects
// is the caller's business (see examples/podnet-service-proxy and
// service/kube).
//
// # Model
//
// A Service has cluster IPs, external IPs, load-balancer IPs (served as
// external IPs, to the sources of its source ranges), ports (name,
// protocol, port, target port, node port), ClientIP session affinity,
// external and internal traffic policies, and Endpoints (address,
// per-port target, ready/serving/terminating, node, topology hints).
// Service.Validate rejects bad input with errors matching ErrInvalid that
// name the Service and field.
//
// # Rules (ModeIptables)
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
//	filter FORWARD -> PREFIX-FORWARD          DROP conntrack-invalid packets (unless TCP-liberal), ACCEPT marked and established traffic
//	nat, filter PREFIX-PROXY-CANARY                             its disappearance means the tables were flushed
//
// Endpoints that are ready take new connections; serving terminating ones
// only when no endpoint is ready. A Service without endpoints is rejected
// (ICMP port unreachable), never black-holed.
//
// # Traffic policies (both modes, as kube-proxy)
//
// An external policy Local binds only traffic from outside the cluster:
// pods (sources in Config.ClusterCIDRs) and the node itself reach every
// endpoint through node ports and external IPs, the node masqueraded;
// from elsewhere only this node's endpoints serve, with the client's
// address kept, and without one the packet is dropped. An internal
// policy Local serves the cluster IP from this node's endpoints and drops
// it when there is none (a Service without endpoints anywhere is
// rejected). Node ports are not served on loopback: 127.0.0.1:NODEPORT is
// refused at once in both modes (kube-proxy's nftables behaviour; its
// iptables mode serves it through route_localnet).
//
// # Topology
//
// Cluster-policy traffic follows the EndpointSlice hints as kube-proxy
// does: when every ready endpoint has a node hint and one names this node
// (trafficDistribution PreferSameNode), only those; else when every ready
// endpoint has a zone hint and one names Config.Zone (PreferClose,
// PreferSameZone, topology-aware routing), only those; else every
// endpoint. The fallback to terminating endpoints ignores hints.
// Proxy.SetZone follows a relabelled Node (service/kube does).
//
// # Cluster IPs
//
// In ModeNftables a new connection to a cluster IP on a port its Service
// does not have is rejected at once, as kube-proxy's nftables mode does.
// With Config.ServiceCIDRs (or Proxy.SetServiceCIDRs, which service/kube
// calls from the ServiceCIDR objects), one to an address of those ranges
// that no rule translated or rejected is dropped, in both modes: in ModeIptables
// that covers the other ports of a cluster IP too (a REJECT per Service
// in the filter table would make adding or deleting a Service cost ten
// times more at 10k Services; kube-proxy's iptables mode lets such
// connections leave by the default route).
//
// # Tables (ModeNftables)
//
// One table per family, named after the prefix (Chains.TableName:
// "podnet-proxy"; "kube-proxy" with KubeChainPrefix), holds everything;
// nothing outside it is touched, so it coexists with iptables-nft's tables
// and other nftables tables. Its rules are fixed; the Services are
// elements of sets and data maps:
//
//	nat-prerouting, nat-output (nat, priority dstnat -100)  -> services
//	services    mark off-cluster sources of cluster IPs (@cluster-masq) and external traffic (@external-masq…) for masquerade;
//	            pods and the node -> ip-pod-entries (Local external policy); -> ip-entries; local destination -> nodeports
//	ip-entries  KEY vmap @ip-affinity                                   (ClientIP affinity: a chain per Service port)
//	            KEY @ip-N dnat to KEY . numgen random mod N map @ip-backends   (one rule per endpoint count N in use)
//	nodeports   the same keyed by protocol . port
//	nat-postrouting (nat, priority srcnat 100)   masquerade hairpin traffic (@hairpin) and marked packets (0x4000)
//	filter-input, filter-forward, filter-output (filter, priority -10) for new connections:
//	            reject cluster IPs without endpoints (@no-endpoints), reject or drop node ports and external IPs without (local) ones
//
// where KEY is ip daddr . meta l4proto . th dport. A partial sync adds and
// deletes elements only, which nf_tables commits without validating the
// table; only the first Service port with a new endpoint count adds a set
// and a rule, and a change to a Service with ClientIP affinity rewrites
// its chain (kube-proxy's per-endpoint dynamic sets), paying one
// validation of the table. New connections meet a hash lookup per endpoint
// count in use, however many Services there are. The nat chains share
// their hooks' priorities with iptables-nft's nat table; the first to
// translate a connection wins. NftElements reads the elements back.
//
// # Sync
//
// Proxy.Update, Delete and Replace change the model; Proxy.Sync writes the
// changes: in ModeIptables in one iptables.Transaction (one
// iptables-restore --noflush per family), in ModeNftables in one netlink
// batch (one nf_tables transaction). The partial/full decision and
// conntrack cleanup are the same in both modes; a full sync runs at the
// first Sync, after a failed one, and when the canary vanished. Neither
// mode reads the tables back for a partial sync, so its cost does not
// grow with the number of Services. Each table is replaced atomically,
// and conntrack keeps established connections on their endpoint, so
// neither kind of sync nor a restart of the proxy interrupts them.
//
// In ModeIptables a partial sync rewrites only the chains of changed
// Services and edits the shared chains (SERVICES, NODEPORTS,
// EXTERNAL-SERVICES) with full-spec -I and -D lines, from the backend's
// record of what it wrote. A full sync rewrites every owned chain,
// deletes stale ones and ensures the jumps from the built-in chains. The
// canary is the PREFIX-PROXY-CANARY chain of the nat and filter tables.
//
// In ModeNftables a partial sync adds and deletes elements; a sync that
// empties an endpoint count's set deletes the set and rewrites that
// kind's entries chain. A full sync deletes and rewrites each table in
// the same transaction. The canary is the one rule of nat-prerouting:
// gone after nft flush table, delete table or flush ruleset. After a
// failed batch the socket is dropped, so nothing queued reaches the
// kernel with the next one. The backend's rules are tested without root
// against a recorder of the batch (see equivalence_test.go): a golden
// rendering, and random sequences of partial syncs that must leave what a
// full sync of the same Services writes.
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
// In ModeIptables a partial sync's cost does not grow with the number of
// Services on the proxy's side, but the kernel re-validates every rule
// reachable from a hooked base chain on each commit that adds a rule, so
// at tens of thousands of Services a one-Service change takes a fraction
// of a second whatever writes it; ModeNftables avoids that (see above). In
// ModeNftables a full sync (at start, after a failure, after a flush)
// starts ClientIP affinity afresh. When two Services claim the same IP,
// protocol and port (or node port), in ModeNftables the first by
// namespace and name holds it and the other is skipped with a warning
// until the first lets go of it; in ModeIptables both rules are written
// and the first one matches. A full sync of 1000 chains or more resets
// the packet counters of the tables it writes (see
// iptables.Transaction.ZeroCounters).
// docs/performance.md has the figures and the commands that measure them.
//
// # Network namespaces
//
// The proxy acts in the namespace of its Backend (through
// iptables.Kernel, or an nf_tables netlink socket opened there) and
// cleans up conntrack there; the caller's thread never changes namespace.
// Unit tests pass IPTables(iptables.NewFake()).
package service
