package nat

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// RefChain is a per-container masquerade chain made by the reference CNI
// bridge plugin (containernetworking/plugins, ipMasq: true): a nat chain
// "CNI-" + 24 hex digits of sha512(network + containerID), holding
//
//	-A CNI-xxx -d SUBNET -m comment --comment "name: \"NET\" id: \"ID\"" -j ACCEPT
//	-A CNI-xxx ! -d 224.0.0.0/4 -m comment --comment "name: \"NET\" id: \"ID\"" -j MASQUERADE
//
// and reached by "-A POSTROUTING -s POD_IP/32 -m comment --comment ... -j CNI-xxx".
type RefChain struct {
	Chain       iptables.Chain
	Network     string
	ContainerID string
	Jumps       []string // POSTROUTING rules (as saved) that jump to it
}

// RefChainName returns the chain name the reference plugin uses for a
// container of a network.
func RefChainName(network, containerID string) string {
	h := sha512.Sum512([]byte(network + containerID))
	return "CNI-" + hex.EncodeToString(h[:])[:24]
}

// RefComment returns the comment the reference plugin puts on those rules.
func RefComment(network, containerID string) string {
	return fmt.Sprintf("name: %q id: %q", network, containerID)
}

var refCommentRE = regexp.MustCompile(`^name: ("(?:[^"\\]|\\.)*") id: ("(?:[^"\\]|\\.)*")$`)

func parseRefComment(c string) (network, id string, ok bool) {
	m := refCommentRE.FindStringSubmatch(c)
	if m == nil {
		return "", "", false
	}
	n, err1 := strconv.Unquote(m[1])
	i, err2 := strconv.Unquote(m[2])
	return n, i, err1 == nil && err2 == nil
}

// FindRefChains lists the reference plugin's per-container masquerade
// chains of network (all of them when containerID is ""), in both
// families. A chain is recognised by its name prefix "CNI-" and the
// reference comment on its rules or on the POSTROUTING jump to it; other
// CNI- chains (portmap's, for example) are not reported.
func FindRefChains(ctx context.Context, b iptables.Backend, network, containerID string) ([]RefChain, error) {
	var out []RefChain
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		t, err := b.Save(ctx, f, iptables.TableNAT)
		if err != nil {
			return nil, err
		}
		found := map[string]*RefChain{}
		var order []string
		note := func(chain, comment, jump string) {
			n, id, ok := parseRefComment(comment)
			if !ok || n != network || containerID != "" && id != containerID || !strings.HasPrefix(chain, "CNI-") || t.Chain(chain) == nil {
				return
			}
			rc := found[chain]
			if rc == nil {
				rc = &RefChain{Chain: natChain(f, chain), Network: n, ContainerID: id}
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

// DeleteRefChains removes the reference plugin's per-container masquerade
// chains of network (of one container, or all when containerID is "") and
// their POSTROUTING jumps, in one transaction per call; it returns how
// many chains it removed. Nothing else in the nat table is touched.
//
// Equivalent to: iptables -t nat -D POSTROUTING -s IP -m comment ... -j CNI-xxx; iptables -t nat -F CNI-xxx; iptables -t nat -X CNI-xxx
func DeleteRefChains(ctx context.Context, b iptables.Backend, network, containerID string) (int, error) {
	if k, ok := b.(*iptables.Kernel); ok && containerID != "" && refChainAbsent(k.NetNS(), RefChainName(network, containerID)) {
		return 0, nil
	}
	chains, err := FindRefChains(ctx, b, network, containerID)
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

// refChainAbsent reports whether nf_tables shows that chain exists in
// neither family's nat table. A CNI DEL asks this for every pod: reading
// nf_tables over netlink costs tens of microseconds, where iptables-save
// costs milliseconds. False means "ask iptables" (also on the legacy
// backend).
func refChainAbsent(ns *netns.NS, chain string) bool {
	c, ok := nft.DialIPTables(ns)
	if !ok {
		return false
	}
	defer c.Close()
	v4, err4 := c.ChainExists(iptables.IPv4, "nat", chain)
	v6, err6 := c.ChainExists(iptables.IPv6, "nat", chain)
	return err4 == nil && err6 == nil && !v4 && !v6
}
