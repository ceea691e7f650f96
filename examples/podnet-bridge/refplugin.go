package main

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// The reference bridge plugin's per-container masquerade, found and
// removed so that a node moving from it to podnet-bridge is cleaned up pod
// by pod (DEL) and wholesale (GC): its iptables chains CNI-<hash>, and with
// ipMasqBackend "nftables" its rules in inet cni_plugins_masquerade.

// refChain is a per-container masquerade chain made by the reference CNI
// bridge plugin (containernetworking/plugins, ipMasq: true): a nat chain
// "CNI-" + 24 hex digits of sha512(network + containerID), holding
//
//	-A CNI-xxx -d SUBNET -m comment --comment "name: \"NET\" id: \"ID\"" -j ACCEPT
//	-A CNI-xxx ! -d 224.0.0.0/4 -m comment --comment "name: \"NET\" id: \"ID\"" -j MASQUERADE
//
// and reached by "-A POSTROUTING -s POD_IP/32 -m comment --comment ... -j CNI-xxx".
type refChain struct {
	Chain       iptables.Chain
	Network     string
	ContainerID string
	Jumps       []string // POSTROUTING rules (as saved) that jump to it
}

// refChainName returns the chain name the reference plugin uses for a
// container of a network.
func refChainName(network, containerID string) string {
	h := sha512.Sum512([]byte(network + containerID))
	return "CNI-" + hex.EncodeToString(h[:])[:24]
}

var refCommentRE = regexp.MustCompile(`^name: ("(?:[^"\\]|\\.)*") id: ("(?:[^"\\]|\\.)*")$`)

// parseRefComment reads the comment the reference plugin puts on those
// rules: name: "NET" id: "ID", each quoted as Go's %q does.
func parseRefComment(c string) (network, id string, ok bool) {
	m := refCommentRE.FindStringSubmatch(c)
	if m == nil {
		return "", "", false
	}
	n, err1 := strconv.Unquote(m[1])
	i, err2 := strconv.Unquote(m[2])
	return n, i, err1 == nil && err2 == nil
}

// findRefChains lists the reference plugin's per-container masquerade
// chains of network (all of them when containerID is ""), in both
// families. A chain is recognised by its name prefix "CNI-" and the
// reference comment on its rules or on the POSTROUTING jump to it; other
// CNI- chains (portmap's, for example) are not reported.
func findRefChains(ctx context.Context, b iptables.Backend, network, containerID string) ([]refChain, error) {
	var out []refChain
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		t, err := b.Save(ctx, f, iptables.TableNAT)
		if err != nil {
			return nil, err
		}
		found := map[string]*refChain{}
		var order []string
		note := func(chain, comment, jump string) {
			n, id, ok := parseRefComment(comment)
			if !ok || n != network || containerID != "" && id != containerID || !strings.HasPrefix(chain, "CNI-") || t.Chain(chain) == nil {
				return
			}
			rc := found[chain]
			if rc == nil {
				rc = &refChain{Chain: natChain(f, chain), Network: n, ContainerID: id}
				found[chain] = rc
				order = append(order, chain)
			}
			if jump != "" && !slices.Contains(rc.Jumps, jump) {
				rc.Jumps = append(rc.Jumps, jump)
			}
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				pr, err := iptables.ParseRule(f, r)
				if err != nil {
					continue // foreign rule of a shape we do not model
				}
				var comment string
				for _, m := range pr.Matches {
					if cm, ok := m.(iptables.Comment); ok {
						comment = string(cm)
					}
				}
				if comment == "" {
					continue
				}
				if j, ok := pr.Target.(iptables.Jump); ok && c.Name == "POSTROUTING" {
					note(string(j), comment, r)
				} else if strings.HasPrefix(c.Name, "CNI-") {
					note(c.Name, comment, "")
				}
			}
		}
		for _, name := range order {
			out = append(out, *found[name])
		}
	}
	return out, nil
}

// deleteRefChains removes the reference plugin's per-container masquerade
// chains of network (of one container, or all when containerID is "") and
// their POSTROUTING jumps, in one transaction per call; it returns how
// many chains it removed. Nothing else in the nat table is touched.
//
// Equivalent to: iptables -t nat -D POSTROUTING -s IP -m comment ... -j CNI-xxx; iptables -t nat -F CNI-xxx; iptables -t nat -X CNI-xxx
func deleteRefChains(ctx context.Context, b iptables.Backend, network, containerID string) (int, error) {
	if k, ok := b.(*iptables.Kernel); ok && containerID != "" && refChainAbsent(k.NetNS(), refChainName(network, containerID)) {
		return 0, nil
	}
	chains, err := findRefChains(ctx, b, network, containerID)
	if err != nil || len(chains) == 0 {
		return 0, err
	}
	tx := iptables.NewTransaction()
	for _, rc := range chains {
		for _, j := range rc.Jumps {
			pr, err := iptables.ParseRule(rc.Chain.Family, j)
			if err != nil {
				return 0, err
			}
			tx.RemoveRule(natChain(rc.Chain.Family, "POSTROUTING"), pr)
		}
		tx.DeleteChain(rc.Chain)
	}
	if err := b.Run(ctx, tx); err != nil {
		return 0, fmt.Errorf("delete reference masquerade chains of network %q: %w", network, err)
	}
	return len(chains), nil
}

// refChainAbsent reports whether nf_tables shows no rule in chain in
// either family's nat table of iptables-nft. A CNI DEL asks this for every
// pod: reading nf_tables over netlink costs tens of microseconds, where
// iptables-save costs milliseconds. A reference chain always holds its two
// rules, so an empty one is treated as absent here (GC, which reads with
// iptables-save, still removes it). False means "ask iptables": also the
// answer when the nat table is in legacy x_tables, which nf_tables cannot
// see, and when netlink fails.
//
// Equivalent to: iptables -t nat -S CHAIN; ip6tables -t nat -S CHAIN (both empty or missing)
func refChainAbsent(host *netns.NS, chain string) bool {
	if natInXTables(host) {
		return false
	}
	c, err := openNftables(host)
	if err != nil {
		return false
	}
	defer c.CloseLasting()
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := &nftables.Table{Name: "nat", Family: fam}
		// The rules of a missing table or chain read as none, not as an error.
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil || len(rules) > 0 {
			return false
		}
	}
	return true
}

// natInXTables reports whether host's IPv4 nat table is one of
// iptables-legacy (x_tables), as /proc/net/ip_tables_names lists them.
func natInXTables(host *netns.NS) bool {
	legacy := false
	host.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/ip_tables_names")
		legacy = err == nil && strings.Contains(string(b), "nat")
		return nil
	})
	return legacy
}

// openNftables returns a lasting nf_tables netlink socket in host.
func openNftables(host *netns.NS) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(host.DialFd()))
	if err != nil {
		return nil, fmt.Errorf("nftables socket in netns %q: %w", host, err)
	}
	return c, nil
}

// The reference bridge plugin with ipMasqBackend "nftables" (v1.5 and
// later) writes one rule per container into the masq_checks chain of
// table inet cni_plugins_masquerade, commented
// "<hash>-<hash>, net: NET, if: IF, id: ID" (cut at 128 bytes).
const (
	refNftTable = "cni_plugins_masquerade"
	refNftChain = "masq_checks"
	refNftMax   = 128 // the comment length the reference cuts at
)

// refNftRule is one of the reference plugin's per-container nftables
// masquerade rules.
type refNftRule struct {
	IfName, ContainerID string // ContainerID may be cut short (the comment is)
	cut                 bool
	rule                *nftables.Rule
}

// owns reports whether the rule is the one of containerID on interface
// ifname ("" for any), allowing for an ID cut short with the comment.
func (r refNftRule) owns(ifname, containerID string) bool {
	if ifname != "" && r.IfName != ifname {
		return false
	}
	return r.ContainerID == containerID || r.cut && strings.HasPrefix(containerID, r.ContainerID)
}

// findRefNftRules returns the reference plugin's nftables masquerade rules
// of network in ns; none when its table is not there (one netlink query).
//
// Equivalent to: nft -a list chain inet cni_plugins_masquerade masq_checks | grep "net: NET,"
func findRefNftRules(ns *netns.NS, network string) ([]refNftRule, error) {
	c, err := openNftables(ns)
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	return readRefNftRules(c, ns, network)
}

// readRefNftRules is findRefNftRules on an open socket.
func readRefNftRules(c *nftables.Conn, ns *netns.NS, network string) ([]refNftRule, error) {
	t := &nftables.Table{Name: refNftTable, Family: nftables.TableFamilyINet}
	if _, err := c.ListChain(t, refNftChain); err != nil {
		return nil, nil // no such table or chain: nothing of the reference's
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: refNftChain, Table: t})
	if err != nil {
		return nil, fmt.Errorf("read the reference plugin's nftables masquerade in netns %q: %w", ns, err)
	}
	var out []refNftRule
	for _, r := range rules {
		comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		_, rest, ok := strings.Cut(comment, ", net: "+strings.ReplaceAll(network, `"`, "")+", if: ")
		if !ok {
			continue
		}
		ifname, id, ok := strings.Cut(rest, ", id: ")
		if !ok {
			continue
		}
		out = append(out, refNftRule{IfName: ifname, ContainerID: id, cut: len(comment) >= refNftMax, rule: r})
	}
	return out, nil
}

// deleteRefNftRules deletes, in one transaction, the reference plugin's
// nftables masquerade rules of network that match selects (a container's
// on DEL: refNftRule.owns; those of gone containers on GC), and returns
// how many there were. A node without the reference's table costs one
// netlink query.
//
// Equivalent to: nft delete rule inet cni_plugins_masquerade masq_checks handle H
func deleteRefNftRules(ns *netns.NS, network string, match func(refNftRule) bool) (int, error) {
	c, err := openNftables(ns)
	if err != nil {
		return 0, err
	}
	defer c.CloseLasting()
	rules, err := readRefNftRules(c, ns, network)
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

// removeLegacyMasquerade deletes the reference bridge plugin's per-container
// masquerade of containerID — its iptables chain (CNI-<hash>, commented
// `name: "NET" id: "ID"`) or, from its nftables backend, its rule in
// inet cni_plugins_masquerade — so a node that ran the reference plugin is
// cleaned up pod by pod. A node without them pays no exec.
func removeLegacyMasquerade(host *netns.NS, n *netConf, ifName, containerID string) error {
	if _, err := deleteRefChains(context.Background(), iptables.NewKernel(host), n.Name, containerID); err != nil {
		return err
	}
	_, err := deleteRefNftRules(host, n.Name, func(r refNftRule) bool { return r.owns(ifName, containerID) })
	return err
}

// gcLegacyMasquerade deletes the reference plugin's per-container chains of
// this network whose container is not a valid attachment.
func gcLegacyMasquerade(host *netns.NS, n *netConf) error {
	ctx := context.Background()
	k := iptables.NewKernel(host)
	chains, err := findRefChains(ctx, k, n.Name, "")
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range n.ValidAttachments {
		valid[a.ContainerID] = true
	}
	for _, rc := range chains {
		if valid[rc.ContainerID] {
			continue
		}
		if _, err := deleteRefChains(ctx, k, n.Name, rc.ContainerID); err != nil {
			return err
		}
	}
	_, err = deleteRefNftRules(host, n.Name, func(r refNftRule) bool {
		return !slices.ContainsFunc(n.ValidAttachments, func(a types.GCAttachment) bool { return r.owns(a.IfName, a.ContainerID) })
	})
	return err
}

func natChain(f iptables.Family, name string) iptables.Chain {
	return iptables.Chain{Family: f, Table: iptables.TableNAT, Name: name}
}
