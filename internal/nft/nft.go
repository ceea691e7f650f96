// Package nft reads what iptables-nft keeps in the kernel straight from
// nf_tables over netlink (github.com/google/nftables), without running
// iptables: whether a chain exists and what a chain's rules match, jump
// to and are commented with. A CNI ADD uses it to see in well
// under a millisecond that the per-network rules are in place, where one
// exec of iptables costs several.
//
// It only reads. On a host whose iptables uses the legacy backend the
// tables it asks for do not exist in nf_tables, so every chain reads as
// absent and callers fall back to iptables itself.
package nft

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

// Conn is a netlink socket to nf_tables inside one namespace. Its calls
// may be made from several goroutines; they take turns on the socket.
type Conn struct {
	mu  sync.Mutex
	nft *nftables.Conn
	// nl is nft's own socket, kept as google/nftables hands it to a
	// SockOption, for the one request made without that library.
	nl *netlink.Conn
}

// Dial opens a Conn whose socket lives in ns.
func Dial(ns *netns.NS) (*Conn, error) {
	c := &Conn{}
	keep := nftables.SockOption(func(nl *netlink.Conn) error {
		c.nl = nl
		return nil
	})
	n, err := nftables.New(nftables.WithNetNSFd(ns.DialFd()), nftables.AsLasting(), nftables.WithSockOptions(keep))
	if err != nil {
		return nil, fmt.Errorf("nf_tables socket in netns %q: %w", ns, err)
	}
	c.nft = n
	return c, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.nft.CloseLasting() }

// DialIPTables opens a Conn in ns when that is where iptables keeps its
// rules; ok is false when the legacy x_tables nat table is in use there
// (nf_tables cannot see it) or the socket cannot be opened, and the caller
// must then ask iptables itself.
func DialIPTables(ns *netns.NS) (c *Conn, ok bool) {
	legacy := false
	ns.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
		legacy = err == nil && strings.Contains(string(b), "nat")
		return nil
	})
	if legacy {
		return nil, false
	}
	c, err := Dial(ns)
	return c, err == nil
}

// ChainExists reports whether chain exists in table of the iptables
// (IPv4) or ip6tables (IPv6) nf_tables backend: it sends
// NFT_MSG_GETCHAIN for it, which fails with ENOENT when the chain or its
// table is missing.
//
// google/nftables' ListChain makes the same request but formats the
// kernel's error with %v, so ENOENT cannot be told from a failure without
// matching text; hence the request is built here, on the same socket.
//
// Equivalent to: iptables -t TABLE -S CHAIN >/dev/null
func (c *Conn) ChainExists(family podnet.Family, table, chain string) (bool, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_CHAIN_TABLE, table)
	ae.String(unix.NFTA_CHAIN_NAME, chain)
	attrs, err := ae.Encode()
	if err != nil {
		return false, fmt.Errorf("get chain %s/%s: %w", table, chain, err)
	}
	// struct nfgenmsg: family, version, resource id (big-endian u16).
	gen := []byte{byte(Table(family, table).Family), unix.NFNETLINK_V0, 0, 0}
	c.mu.Lock()
	_, err = c.nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETCHAIN),
			Flags: netlink.Request,
		},
		Data: append(gen, attrs...),
	})
	c.mu.Unlock()
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get chain %s/%s: %w", table, chain, err)
	}
	return true, nil
}

// Rule is what Rules tells of one rule.
type Rule struct {
	Comment string // its -m comment --comment, "" if none
	Jump    string // the chain it jumps or goes to, "" if none
	// Cmps are the rule's comparisons in order: how iptables-nft matches
	// -s and -d (the prefix's leading bytes; a mask precedes them in a
	// bitwise expression when the length is not a whole number of bytes).
	Cmps []Cmp
	// Target and TargetInfo are the xtables target (MASQUERADE, DNAT …)
	// and its kernel struct, when the rule has one. TargetInfo is the
	// struct as google/nftables' xt package encodes what it decoded: the
	// kernel's bytes without the padding to 8 bytes after them.
	Target     string
	TargetInfo []byte
}

// Cmp is one nf_tables comparison.
type Cmp struct {
	Not   bool   // NFT_CMP_NEQ (! -s, ! -d) rather than NFT_CMP_EQ
	Value []byte // the compared data
	Mask  []byte // the mask of a bitwise expression just before it, if any
}

// Rules returns the rules of chain in order; none when the chain is empty
// or does not exist (the kernel's dump of a missing chain is empty).
//
// Equivalent to: iptables -t TABLE -S CHAIN (comments, comparisons,
// jumps and targets only)
func (c *Conn) Rules(family podnet.Family, table, chain string) ([]Rule, error) {
	t := Table(family, table)
	c.mu.Lock()
	rs, err := c.nft.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list rules of %s/%s: %w", table, chain, err)
	}
	var rules []Rule
	for _, r := range rs {
		rule, err := ruleOf(t.Family, r)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s/%s: %w", table, chain, err)
		}
		rules = append(rules, rule)
	}
	return rules, nil
}

// ruleOf keeps what Rule reports of r: an xtables "comment" match (how
// iptables-nft 1.8 stores comments) or a comment in the user data (how
// newer iptables-nft and nft store it), a jump/goto verdict, comparisons
// with the mask of a bitwise expression before them, and an xtables
// target.
func ruleOf(fam nftables.TableFamily, r *nftables.Rule) (Rule, error) {
	var (
		out  Rule
		mask []byte
	)
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Match:
			if c, ok := e.Info.(*xt.Comment); ok && e.Name == "comment" {
				out.Comment = string(*c)
			}
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			out.Cmps = append(out.Cmps, Cmp{Not: e.Op == expr.CmpOpNeq, Value: e.Data, Mask: mask})
			mask = nil
		case *expr.Target:
			info, err := xt.Marshal(xt.TableFamily(fam), e.Rev, e.Info)
			if err != nil {
				return Rule{}, fmt.Errorf("target %s: %w", e.Name, err)
			}
			out.Target, out.TargetInfo = e.Name, info
		case *expr.Verdict:
			if e.Kind == expr.VerdictJump || e.Kind == expr.VerdictGoto {
				out.Jump = e.Chain
			}
		}
	}
	if c := CommentOf(r.UserData); c != "" {
		out.Comment = c
	}
	return out, nil
}
