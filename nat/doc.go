// Package nat programs iptables NAT rules as typed values applied in
// atomic transactions, and lists and deletes conntrack flows — in any
// network namespace.
//
// # Rules
//
// A Rule is plain data: basic matches (-s, -d, -i, -o, -p), match modules
// in order (Ports, AddrType, Mark, Comment, Statistic, Recent, Conntrack,
// PhysDev) and a Target (Masquerade, SNAT, DNAT, SetMark, Jump, Goto,
// Return, Accept, Drop, Reject). Rule.Args and Rule.Spec render it exactly
// as iptables-save prints it back, so a rendered rule and a saved one
// compare equal as text; ParseRule and ParseSave read iptables-save output
// back into the model.
//
//	r := nat.Rule{Source: nat.Addr{Prefix: pod}, Destination: nat.Addr{Prefix: pod, Not: true}, Target: nat.Masquerade{}}
//	r.Spec(nat.IPv4) // "-s 10.200.0.0/24 ! -d 10.200.0.0/24 -j MASQUERADE"
//
// # Transactions
//
// A Transaction collects changes; Backend.Run applies them with one
// iptables-restore --noflush per family. A component owns chains by name
// prefix: Declare writes an owned chain's full contents, Prune removes the
// owned chains no longer declared (and the jumps to them), EnsureRule and
// RemoveRule place or remove single rules in built-in or foreign chains
// without touching anything else, and Insert/Delete edit a big chain rule
// by rule inside the same restore (a partial sync). Builder methods never
// fail: the first invalid input is returned by Run, which then changes
// nothing. Run reads tables back (iptables-save) only for EnsureRule,
// RemoveRule and Prune. Each table's part is one nf_tables batch.
//
// # Network namespaces
//
// Kernel acts in the namespace it was made for: iptables-restore,
// iptables-save and go-iptables' iptables processes are started from a
// thread inside it (netns.Do), and conntrack uses a netlink socket opened
// in it. The caller's thread never changes namespace.
//
// # Masquerade and DNAT
//
// NetworkMasquerade is one chain per network and family plus one
// POSTROUTING jump — constant in the number of pods — excluding multicast.
// FindRefChains and DeleteRefChains clean up the reference bridge plugin's
// per-container CNI-<hash> chains. HostPorts implements CNI port mappings
// with hairpin and localhost masquerade; VIP builds kube-proxy-style
// service and endpoint chains (statistic, recent, mark, DNAT).
//
// # Conntrack
//
// ListFlows, DeleteFlows and FlushFlows use ti-mo/conntrack; Flow.String
// prints a flow as conntrack -L does.
//
// # Testing
//
// Fake is an in-memory Backend: it plans a transaction like Kernel, applies
// the restore lines to a copy with iptables-restore's semantics and keeps
// the copy only on success; Dump returns iptables-save text for golden
// tests.
package nat
