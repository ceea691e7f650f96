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

// owns reports whether the rule is the one of containerID (and ifname,
// unless ""), allowing for an ID cut short with the comment.
func (r RefNftRule) owns(ifname, containerID string) bool {
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
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return nil, err
	}
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

// DeleteRefNftRules deletes the reference plugin's nftables masquerade
// rules of network for containerID on interface ifname ("" for any) in one
// transaction, and returns how many there were.
//
// Equivalent to: nft delete rule inet cni_plugins_masquerade masq_checks handle H
func DeleteRefNftRules(ns *netns.NS, network, ifname, containerID string) (int, error) {
	rules, err := FindRefNftRules(ns, network)
	if err != nil || len(rules) == 0 {
		return 0, err
	}
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rules {
		if r.owns(ifname, containerID) {
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
		return 0, fmt.Errorf("delete the reference plugin's nftables masquerade of %s in netns %q: %w", containerID, ns, err)
	}
	return n, nil
}
