// Package iptables models iptables rules as typed values and applies them
// to the tables of a network namespace in atomic transactions.
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
//	r := iptables.Rule{Source: iptables.Addr{Prefix: pod}, Destination: iptables.Addr{Prefix: pod, Not: true}, Target: iptables.Masquerade{}}
//	r.Spec(iptables.IPv4) // "-s 10.200.0.0/24 ! -d 10.200.0.0/24 -j MASQUERADE"
//
// # Transactions
//
// A Transaction collects changes; Backend.Run applies them with one
// iptables-restore --noflush per family. A component owns chains, told by
// an Owner (PrefixOwner("PODNET") owns PODNET-…): Declare writes an owned
// chain's full contents, Prune removes the owned chains no longer declared
// (and the jumps to them), EnsureRule and RemoveRule place or remove single
// rules in built-in or foreign chains without touching anything else, and
// Insert/Delete edit a big chain rule by rule inside the same restore.
// Builder methods never fail: the first invalid input is returned by Run,
// which then changes nothing. Run reads tables back (iptables-save) only
// for EnsureRule, RemoveRule and Prune. Each table's part is one nf_tables
// batch, and a transaction spanning tables or families is rolled back as a
// whole when a later part fails.
//
// Writing goes through transactions only. go-iptables serves the one
// single-rule question, Backend.Check (iptables -C), with its lock
// handling.
//
// # Network namespaces
//
// Kernel acts in the namespace it was made for: iptables-restore,
// iptables-save and iptables processes are started from a thread inside it
// (netns.Do). The caller's thread never changes namespace.
//
// # Testing
//
// Fake is an in-memory Backend: it plans a transaction like Kernel, applies
// the restore lines to a copy with iptables-restore's semantics and keeps
// the copy only on success; Dump returns iptables-save text for golden
// tests. Fake and Kernel give the same answers, errors included.
package iptables
