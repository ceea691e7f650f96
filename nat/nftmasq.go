package nat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/iptables"
)

// The nftables form of a NetworkMasquerade (Backend Nftables): the same
// rule set as the iptables one, in a table of its own per family
// (NftTable, so "podnet-masquerade"), which nothing else writes:
//
//	table ip podnet-masquerade {
//		chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//			ip saddr 10.200.0.0/24 jump net-XXXX comment "podnet masquerade: NET"
//		}
//		chain net-XXXX {
//			ip daddr 224.0.0.0/4 return comment "podnet masquerade: NET <spec>"
//			ip daddr 10.200.0.0/16 return comment …      (each Exempt destination)
//			ip daddr != 10.200.0.0/24 masquerade comment …
//		}
//	}
//
// Every rule's comment names the network, and those of the network's chain
// carry a digest of the specification, so that an unchanged rule set is
// recognised from one dump of the two chains, with no write.

// NftTable returns the name of the nftables tables (ip and ip6) that
// Nftables writes: the prefix in lower case and "-masquerade".
func (m NetworkMasquerade) NftTable() string {
	return strings.ToLower(prefixOr(m.Prefix)) + "-masquerade"
}

// NftChain returns the name of the network's chain in those tables:
// "net-" and a hash of the network name.
func (m NetworkMasquerade) NftChain() string {
	return "net-" + iptables.ChainHash(m.Network, 16)
}

func (m NetworkMasquerade) nftComment() string { return "podnet masquerade: " + m.Network }

// digest identifies the specification in the comments of the network's
// chain.
func (m NetworkMasquerade) digest() string {
	h := sha256.Sum256(fmt.Appendf(nil, "%v|%v|%v", m.Subnets, m.Exempt, m.RandomFully))
	return hex.EncodeToString(h[:6])
}

// nftRules returns the network chain's rules and the postrouting jumps of
// family f.
func (m NetworkMasquerade) nftRules(f podnet.Family) (chain, jumps []*nftables.Rule) {
	mcast := netip.MustParsePrefix("224.0.0.0/4")
	if f == podnet.IPv6 {
		mcast = netip.MustParsePrefix("ff00::/8")
	}
	comment := nft.Comment(m.nftComment() + " " + m.digest())
	ret := func(p netip.Prefix) *nftables.Rule {
		return &nftables.Rule{Exprs: append(nft.InPrefix(nft.DAddr, p, false), nft.Verdict(expr.VerdictReturn, "")), UserData: comment}
	}
	chain = append(chain, ret(mcast))
	for _, e := range m.Exempt {
		if iptables.FamilyOf(e.Addr()) == f {
			chain = append(chain, ret(e))
		}
	}
	for _, s := range m.Subnets {
		if iptables.FamilyOf(s.Addr()) != f {
			continue
		}
		chain = append(chain, &nftables.Rule{Exprs: append(nft.InPrefix(nft.DAddr, s, true), &expr.Masq{FullyRandom: m.RandomFully}), UserData: comment})
		jumps = append(jumps, &nftables.Rule{Exprs: append(nft.InPrefix(nft.SAddr, s, false), nft.Verdict(expr.VerdictJump, m.NftChain())), UserData: nft.Comment(m.nftComment())})
	}
	return chain, jumps
}

// nftState is what the kernel has of the network in one family.
type nftState struct {
	jumps []*nftables.Rule // the network's postrouting jumps
	chain []*nftables.Rule // the network chain's rules; nil when it is missing
	found bool             // the network chain exists
}

func (m NetworkMasquerade) nftRead(c *nftables.Conn, t *nftables.Table) nftState {
	var st nftState
	if rules, err := c.GetRules(t, &nftables.Chain{Name: "postrouting", Table: t}); err == nil {
		for _, r := range rules {
			if nft.CommentOf(r.UserData) == m.nftComment() {
				st.jumps = append(st.jumps, r)
			}
		}
	}
	if _, err := c.ListChain(t, m.NftChain()); err != nil {
		return st // GetRules of a missing chain reads as empty, not as an error
	}
	st.found = true
	st.chain, _ = c.GetRules(t, &nftables.Chain{Name: m.NftChain(), Table: t})
	return st
}

// current reports whether st is exactly the rule set of family f.
func (m NetworkMasquerade) current(st nftState, f podnet.Family) bool {
	chain, jumps := m.nftRules(f)
	if !st.found || len(st.chain) != len(chain) || len(st.jumps) != len(jumps) {
		return false
	}
	want := m.nftComment() + " " + m.digest()
	for _, r := range st.chain {
		if nft.CommentOf(r.UserData) != want {
			return false
		}
	}
	return true
}

// ensure reads the network's rules once per family and, when they differ,
// rewrites them in one transaction (other networks' rules are left alone).
func (b nftablesBackend) ensure(_ context.Context, m NetworkMasquerade) error {
	c, err := nft.Open(b.ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	writes := false
	for _, f := range m.families() {
		t := nft.Table(f, m.NftTable())
		st := m.nftRead(c, t)
		if m.current(st, f) {
			continue
		}
		writes = true
		accept := nftables.ChainPolicyAccept
		c.AddTable(t)
		post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
		net := c.AddChain(&nftables.Chain{Name: m.NftChain(), Table: t})
		c.FlushChain(net)
		for _, r := range st.jumps {
			if err := c.DelRule(r); err != nil {
				return err
			}
		}
		chain, jumps := m.nftRules(f)
		for _, r := range chain {
			r.Table, r.Chain = t, net
			c.AddRule(r)
		}
		for _, r := range jumps {
			r.Table, r.Chain = t, post
			c.AddRule(r)
		}
	}
	if !writes {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade %q: nftables in netns %q: %w", m.Network, b.ns, err)
	}
	return nil
}

// check compares the network's chains with the specification (see
// current).
func (b nftablesBackend) check(_ context.Context, m NetworkMasquerade) error {
	c, err := nft.Open(b.ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	for _, f := range m.families() {
		t := nft.Table(f, m.NftTable())
		if !m.current(m.nftRead(c, t), f) {
			return fmt.Errorf("masquerade %q: the %v rules in nftables table %s of netns %q are missing or differ: %w", m.Network, f, t.Name, b.ns, podnet.ErrNotFound)
		}
	}
	return nil
}

// delete removes the network's jumps and chain in both families; other
// networks' rules and the tables stay.
func (b nftablesBackend) delete(_ context.Context, m NetworkMasquerade) error {
	c, err := nft.Open(b.ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	writes := false
	for _, f := range []podnet.Family{podnet.IPv4, podnet.IPv6} {
		t := nft.Table(f, m.NftTable())
		st := m.nftRead(c, t)
		for _, r := range st.jumps {
			if err := c.DelRule(r); err != nil {
				return err
			}
			writes = true
		}
		if st.found {
			ch := &nftables.Chain{Name: m.NftChain(), Table: t}
			c.FlushChain(ch)
			c.DelChain(ch)
			writes = true
		}
	}
	if !writes {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade %q: delete from nftables in netns %q: %w", m.Network, b.ns, err)
	}
	return nil
}
