package nat

import (
	"fmt"
	"strings"

	"github.com/google/nftables"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/netns"
)

// The reference bridge plugin with ipMasqBackend "nftables" (v1.5 and
// later) writes one rule per container into the masq_checks chain of
// table inet cni_plugins_masquerade, commented
// "<hash>-<hash>, net: NET, if: IF, id: ID" (cut at 128 bytes).
const (
	refNftTable = "cni_plugins_masquerade"
	refNftChain = "masq_checks"
	refNftMax   = 128 // the comment length the reference cuts at
)

// RefNftRule is one of the reference plugin's per-container nftables
// masquerade rules.
type RefNftRule struct {
	IfName, ContainerID string // ContainerID may be cut short (the comment is)
	cut                 bool
	rule                *nftables.Rule
}

// Owns reports whether the rule is the one of containerID on interface
// ifname ("" for any), allowing for an ID cut short with the comment.
func (r RefNftRule) Owns(ifname, containerID string) bool {
	if ifname != "" && r.IfName != ifname {
		return false
	}
	return r.ContainerID == containerID || r.cut && strings.HasPrefix(containerID, r.ContainerID)
}

// FindRefNftRules returns the reference plugin's nftables masquerade rules
// of network in ns; none when its table is not there (one netlink query).
//
// Equivalent to: nft -a list chain inet cni_plugins_masquerade masq_checks | grep "net: NET,"
func FindRefNftRules(ns *netns.NS, network string) ([]RefNftRule, error) {
	c, err := nft.Open(ns)
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	return findRefNftRules(c, ns, network)
}

func findRefNftRules(c *nftables.Conn, ns *netns.NS, network string) ([]RefNftRule, error) {
	t := &nftables.Table{Name: refNftTable, Family: nftables.TableFamilyINet}
	if _, err := c.ListChain(t, refNftChain); err != nil {
		return nil, nil // no such table or chain: nothing of the reference's
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: refNftChain, Table: t})
	if err != nil {
		return nil, fmt.Errorf("read the reference plugin's nftables masquerade in netns %q: %w", ns, err)
	}
	var out []RefNftRule
	for _, r := range rules {
		comment := nft.CommentOf(r.UserData)
		_, rest, ok := strings.Cut(comment, ", net: "+strings.ReplaceAll(network, `"`, "")+", if: ")
		if !ok {
			continue
		}
		ifname, id, ok := strings.Cut(rest, ", id: ")
		if !ok {
			continue
		}
		out = append(out, RefNftRule{IfName: ifname, ContainerID: id, cut: len(comment) >= refNftMax, rule: r})
	}
	return out, nil
}

// DeleteRefNftRules deletes, in one transaction, the reference plugin's
// nftables masquerade rules of network that match selects (a container's
// on DEL: RefNftRule.Owns; those of gone containers on GC), and returns
// how many there were. A node without the reference's table costs one
// netlink query.
//
// Equivalent to: nft delete rule inet cni_plugins_masquerade masq_checks handle H
func DeleteRefNftRules(ns *netns.NS, network string, match func(RefNftRule) bool) (int, error) {
	c, err := nft.Open(ns)
	if err != nil {
		return 0, err
	}
	defer c.CloseLasting()
	rules, err := findRefNftRules(c, ns, network)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rules {
		if match(r) {
			if err := c.DelRule(r.rule); err != nil {
				return 0, err
			}
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := c.Flush(); err != nil {
		return 0, fmt.Errorf("delete the reference plugin's nftables masquerade of network %q in netns %q: %w", network, ns, err)
	}
	return n, nil
}
