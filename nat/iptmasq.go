package nat

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// The iptables form of a NetworkMasquerade (Backend IPTables): one chain
// per network and family in table nat, reached from POSTROUTING.

// Chain returns the name of the network's iptables masquerade chain:
// PREFIX-MASQ- and a hash of the network name.
func (m NetworkMasquerade) Chain() string {
	p := prefixOr(m.Prefix) + "-MASQ-"
	return p + iptables.ChainHash(m.Network, iptables.MaxChainName-len(p))
}

func (m NetworkMasquerade) comment() iptables.Comment {
	return iptables.Comment("podnet masquerade: " + m.Network)
}

// Rules returns the iptables rules of the network's chain and its jump
// rules for POSTROUTING, for family f: what IPTables writes.
func (m NetworkMasquerade) Rules(f iptables.Family) (chain []iptables.Rule, jumps []iptables.Rule) {
	mcast := netip.MustParsePrefix("224.0.0.0/4")
	if f == iptables.IPv6 {
		mcast = netip.MustParsePrefix("ff00::/8")
	}
	chain = append(chain, iptables.Rule{Destination: iptables.Addr{Prefix: mcast}, Target: iptables.Return})
	for _, e := range m.Exempt {
		if iptables.FamilyOf(e.Addr()) == f {
			chain = append(chain, iptables.Rule{Destination: iptables.Addr{Prefix: e.Masked()}, Target: iptables.Return})
		}
	}
	for _, s := range m.Subnets {
		if iptables.FamilyOf(s.Addr()) != f {
			continue
		}
		s = s.Masked()
		chain = append(chain, iptables.Rule{Destination: iptables.Addr{Prefix: s, Not: true}, Target: iptables.Masquerade{RandomFully: m.RandomFully}})
		jumps = append(jumps, iptables.Rule{Source: iptables.Addr{Prefix: s}, Matches: []iptables.Match{m.comment()}, Target: iptables.Jump(m.Chain())})
	}
	return chain, jumps
}

// ensure reads the nat table once per family and applies what differs in
// one transaction. On a Kernel of iptables-nft, the common case (the rule
// set is complete) is recognised first by reading nf_tables over netlink,
// without running iptables.
func (b iptablesBackend) ensure(ctx context.Context, m NetworkMasquerade) error {
	if k, ok := b.ipt.(*iptables.Kernel); ok && k.Mode() != iptables.ModeLegacy && m.present(k.NetNS()) {
		return nil
	}
	tx := iptables.NewTransaction()
	for _, f := range m.families() {
		cur, err := b.ipt.Save(ctx, f, iptables.TableNAT)
		if err != nil {
			return err
		}
		m.converge(tx, f, cur)
	}
	if tx.Len() == 0 {
		return nil
	}
	if err := b.ipt.Run(ctx, tx); err != nil {
		return fmt.Errorf("ensure masquerade for network %q: %w", m.Network, err)
	}
	return nil
}

// converge adds to tx what turns cur, the nat table of family f, into one
// holding the network's rules.
func (m NetworkMasquerade) converge(tx *iptables.Transaction, f iptables.Family, cur *iptables.TableRules) {
	rules, jumps := m.Rules(f)
	c := iptables.Chain{Family: f, Table: iptables.TableNAT, Name: m.Chain()}
	if !sameRules(cur.Chain(c.Name), rules, f) {
		tx.Declare(c, rules...)
	}
	postrouting := iptables.Chain{Family: f, Table: iptables.TableNAT, Name: "POSTROUTING"}
	post := cur.Chain(postrouting.Name)
	for _, j := range jumps {
		if s, _ := j.Spec(f); post == nil || !slices.Contains(post.Rules, s) {
			// Appended, as the reference plugin does: exemptions that node
			// agents insert at the top keep precedence.
			tx.EnsureRule(postrouting, false, j)
		}
	}
	if post == nil {
		return
	}
	// Jumps of this network for subnets no longer listed.
	for _, r := range post.Rules {
		if iptables.TargetOf(r) != c.Name || slices.ContainsFunc(jumps, func(j iptables.Rule) bool { s, _ := j.Spec(f); return s == r }) {
			continue
		}
		if pr, err := iptables.ParseRule(f, r); err == nil {
			tx.RemoveRule(postrouting, pr)
		}
	}
}

// present reports whether iptables-nft in ns holds the network's rule set
// as m specifies it: for every family, the chain's rules in order and one
// commented jump per subnet from POSTROUTING, each with its prefix, and
// the masquerade rules with m's --random-fully. The RETURN rules (multicast
// and each Exempt destination) are told by their one prefix; nf_tables'
// view here does not show their verdict. False means "ask
// iptables": it is also the answer on the legacy backend, and for any rule
// encoded in a way present does not read.
//
// It exists because a CNI ADD ensures these rules for every pod: reading
// nf_tables over netlink takes tens of microseconds, where one
// iptables-save costs milliseconds (docs/performance.md).
func (m NetworkMasquerade) present(ns *netns.NS) bool {
	c, ok := nft.DialIPTables(ns)
	if !ok {
		return false
	}
	defer c.Close()
	for _, f := range m.families() {
		chain, jumps := m.Rules(f)
		have, err := c.Rules(f, "nat", m.Chain())
		if err != nil || len(have) != len(chain) {
			return false
		}
		for i, r := range chain {
			if !m.seenAs(f, r, have[i]) {
				return false
			}
		}
		post, err := c.Rules(f, "nat", "POSTROUTING")
		if err != nil {
			return false
		}
		found := 0
		for _, r := range post {
			if r.Jump == m.Chain() && r.Comment == string(m.comment()) {
				if !slices.ContainsFunc(jumps, func(j iptables.Rule) bool { return m.seenAs(f, j, r) }) {
					return false // a jump for a subnet no longer listed
				}
				found++
			}
		}
		if found != len(jumps) {
			return false
		}
	}
	return true
}

// seenAs reports whether got, as nf_tables holds it, is r: its one prefix,
// its jump, and for MASQUERADE the random-fully flag of the xtables
// target. iptables-nft compares a prefix whole bytes at a time: the
// leading bits/8 bytes of the address when the length is a whole number of
// bytes, else the whole address after a bitwise mask.
func (m NetworkMasquerade) seenAs(f iptables.Family, r iptables.Rule, got nft.Rule) bool {
	a := r.Source
	if !a.Prefix.IsValid() {
		a = r.Destination
	}
	p := a.Prefix.Masked()
	addr := p.Addr().AsSlice()
	want, mask := addr[:p.Bits()/8], []byte(nil)
	if p.Bits()%8 != 0 {
		want, mask = addr, net.CIDRMask(p.Bits(), len(addr)*8)
	}
	if len(got.Cmps) != 1 {
		return false
	}
	if c := got.Cmps[0]; c.Not != a.Not || !slices.Equal(c.Value, want) || !slices.Equal(c.Mask, mask) {
		return false
	}
	switch t := r.Target.(type) {
	case iptables.Jump:
		return got.Jump == string(t)
	case iptables.Masquerade:
		return got.Target == "MASQUERADE" && masqRandomFully(f, got.TargetInfo) == t.RandomFully
	}
	return got.Jump == "" && got.Target == ""
}

// masqRandomFully reads NF_NAT_RANGE_PROTO_RANDOM_FULLY from a MASQUERADE
// target's struct: the flags of nf_nat_ipv4_multi_range_compat's first
// range (after its u32 rangesize) for IPv4, of nf_nat_range for IPv6.
func masqRandomFully(f iptables.Family, info []byte) bool {
	const randomFully = 1 << 4
	off := 4
	if f == iptables.IPv6 {
		off = 0
	}
	return len(info) >= off+4 && binary.NativeEndian.Uint32(info[off:])&randomFully != 0
}

// check compares the saved nat table rule for rule.
func (b iptablesBackend) check(ctx context.Context, m NetworkMasquerade) error {
	for _, f := range m.families() {
		chain, jumps := m.Rules(f)
		t, err := b.ipt.Save(ctx, f, iptables.TableNAT)
		if err != nil {
			return err
		}
		have := t.Chain(m.Chain())
		if have == nil || len(have.Rules) != len(chain) {
			return fmt.Errorf("check masquerade of network %q: %v chain %s missing or incomplete: %w", m.Network, f, m.Chain(), podnet.ErrNotFound)
		}
		for i, r := range chain {
			if s, _ := r.Spec(f); s != have.Rules[i] {
				return fmt.Errorf("check masquerade of network %q: %v chain %s has %q, want %q: %w", m.Network, f, m.Chain(), have.Rules[i], s, podnet.ErrNotFound)
			}
		}
		post := t.Chain("POSTROUTING")
		for _, j := range jumps {
			if s, _ := j.Spec(f); post == nil || !slices.Contains(post.Rules, s) {
				return fmt.Errorf("check masquerade of network %q: %v nat POSTROUTING lacks %q: %w", m.Network, f, s, podnet.ErrNotFound)
			}
		}
	}
	return nil
}

func sameRules(c *iptables.ChainRules, rules []iptables.Rule, f iptables.Family) bool {
	if c == nil || len(c.Rules) != len(rules) {
		return false
	}
	for i, r := range rules {
		if s, err := r.Spec(f); err != nil || s != c.Rules[i] {
			return false
		}
	}
	return true
}

// delete removes the chain and the jumps to it in one transaction.
func (b iptablesBackend) delete(ctx context.Context, m NetworkMasquerade) error {
	tx := iptables.NewTransaction()
	name := m.Chain()
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		cur, err := b.ipt.Save(ctx, f, iptables.TableNAT)
		if err != nil {
			return err
		}
		if cur.Chain(name) == nil {
			continue
		}
		if err := removeJumpsTo(tx, f, cur, name); err != nil {
			return fmt.Errorf("delete masquerade for network %q: %w", m.Network, err)
		}
		tx.DeleteChain(iptables.Chain{Family: f, Table: iptables.TableNAT, Name: name})
	}
	if tx.Len() == 0 {
		return nil
	}
	if err := b.ipt.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete masquerade for network %q: %w", m.Network, err)
	}
	return nil
}

// removeJumpsTo adds to tx the removal of every rule of cur that jumps to
// chain.
func removeJumpsTo(tx *iptables.Transaction, f iptables.Family, cur *iptables.TableRules, chain string) error {
	for _, c := range cur.Chains {
		for _, r := range c.Rules {
			if iptables.TargetOf(r) != chain {
				continue
			}
			pr, err := iptables.ParseRule(f, r)
			if err != nil {
				return err
			}
			tx.RemoveRule(iptables.Chain{Family: f, Table: cur.Name, Name: c.Name}, pr)
		}
	}
	return nil
}
