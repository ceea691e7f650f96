package nat

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/podnet/podnet"
)

// DefaultPrefix starts the names of the chains podnet's helpers own.
const DefaultPrefix = "PODNET-"

// NetworkMasquerade describes the masquerade rule set of one network: traffic from
// its subnets to anywhere else leaves with the node's address. The rule set
// is one chain per network and family plus one jump in nat POSTROUTING, so
// its size does not depend on how many pods the network has:
//
//	-A POSTROUTING -s 10.200.0.0/24 -m comment --comment "podnet masquerade: net" -j PODNET-MASQ-XXXX
//	-A PODNET-MASQ-XXXX -d 224.0.0.0/4 -j RETURN
//	-A PODNET-MASQ-XXXX ! -d 10.200.0.0/24 -j MASQUERADE
//
// Multicast (224.0.0.0/4, ff00::/8) is never masqueraded so pods can use it
// on the local network.
type NetworkMasquerade struct {
	Network     string         // network name; required, names the chain
	Subnets     []netip.Prefix // pod subnets; IPv4 and IPv6 may be mixed
	Prefix      string         // chain name prefix; "" means DefaultPrefix
	RandomFully bool           // MASQUERADE --random-fully
}

// Chain returns the name of the network's masquerade chain:
// PREFIX + "MASQ-" + a hash of the network name.
func (m NetworkMasquerade) Chain() string {
	p := m.Prefix
	if p == "" {
		p = DefaultPrefix
	}
	return p + "MASQ-" + hashName(m.Network, 28-len(p)-5)
}

// hashName returns n characters of a base32 hash of s (as kube-proxy does).
func hashName(s string, n int) string {
	h := sha256.Sum256([]byte(s))
	e := base32.StdEncoding.EncodeToString(h[:])
	if n > len(e) {
		n = len(e)
	}
	if n < 8 {
		n = 8
	}
	return e[:n]
}

func (m NetworkMasquerade) comment() Comment { return Comment("podnet masquerade: " + m.Network) }

func (m NetworkMasquerade) validate() error {
	if m.Network == "" {
		return podnet.Invalid("masquerade: network name is empty")
	}
	if len(m.Chain()) > 28 {
		return podnet.Invalid("masquerade: prefix %q too long", m.Prefix)
	}
	if err := ValidateChainName(m.Chain()); err != nil {
		return err
	}
	if len(m.Subnets) == 0 {
		return podnet.Invalid("masquerade %q: no subnets", m.Network)
	}
	for _, s := range m.Subnets {
		if !s.IsValid() {
			return podnet.Invalid("masquerade %q: invalid subnet", m.Network)
		}
	}
	return nil
}

func (m NetworkMasquerade) families() []Family {
	var fs []Family
	for _, s := range m.Subnets {
		if f := FamilyOf(s.Addr()); !slices.Contains(fs, f) {
			fs = append(fs, f)
		}
	}
	slices.Sort(fs)
	return fs
}

// Rules returns the rules of the network's chain and the jump rules for
// POSTROUTING, for family f.
func (m NetworkMasquerade) Rules(f Family) (chain []Rule, jumps []Rule) {
	mcast := netip.MustParsePrefix("224.0.0.0/4")
	if f == IPv6 {
		mcast = netip.MustParsePrefix("ff00::/8")
	}
	chain = append(chain, Rule{Destination: Addr{Prefix: mcast}, Target: Return})
	for _, s := range m.Subnets {
		if FamilyOf(s.Addr()) != f {
			continue
		}
		s = s.Masked()
		chain = append(chain, Rule{Destination: Addr{Prefix: s, Not: true}, Target: Masquerade{RandomFully: m.RandomFully}})
		jumps = append(jumps, Rule{Source: Addr{Prefix: s}, Matches: []Match{m.comment()}, Target: Jump(m.Chain())})
	}
	return chain, jumps
}

// Ensure makes the network's masquerade rules present and exactly as
// specified, in one transaction per call. When they already are, it reads
// the nat table once per family and writes nothing.
//
// Equivalent to: iptables -t nat -N CHAIN; iptables -t nat -A CHAIN ...;
// iptables -t nat -C POSTROUTING ... || iptables -t nat -I POSTROUTING ...
func (m NetworkMasquerade) Ensure(ctx context.Context, b Backend) error {
	if err := m.validate(); err != nil {
		return err
	}
	tx := NewTransaction()
	for _, f := range m.families() {
		rules, jumps := m.Rules(f)
		cur, err := b.Save(ctx, f, TableNAT)
		if err != nil {
			return err
		}
		c := Chain{f, TableNAT, m.Chain()}
		if !sameRules(cur.Chain(c.Name), rules, f) {
			tx.Declare(c, rules...)
		}
		post := cur.Chain("POSTROUTING")
		for _, j := range jumps {
			if s, _ := j.Spec(f); post == nil || !slices.Contains(post.Rules, s) {
				tx.EnsureRule(Chain{f, TableNAT, "POSTROUTING"}, false, j) // appended, as the reference plugin does: exemptions inserted at the top by node agents keep precedence
			}
		}
		// Jumps of this network for subnets no longer listed.
		if post != nil {
			for _, r := range post.Rules {
				if ruleTarget(r) == c.Name && !slices.ContainsFunc(jumps, func(j Rule) bool { s, _ := j.Spec(f); return s == r }) {
					if pr, err := ParseRule(f, r); err == nil {
						tx.RemoveRule(Chain{f, TableNAT, "POSTROUTING"}, pr)
					}
				}
			}
		}
	}
	if tx.Len() == 0 {
		return nil
	}
	if err := b.Run(ctx, tx); err != nil {
		return fmt.Errorf("ensure masquerade for network %q: %w", m.Network, err)
	}
	return nil
}

func sameRules(c *ChainRules, rules []Rule, f Family) bool {
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

// Delete removes the network's chain and every POSTROUTING rule jumping to
// it, in both families; it succeeds when they are already gone. Only
// Network and Prefix are used.
//
// Equivalent to: iptables -t nat -D POSTROUTING ... -j CHAIN; iptables -t nat -F CHAIN; iptables -t nat -X CHAIN
func (m NetworkMasquerade) Delete(ctx context.Context, b Backend) error {
	if m.Network == "" {
		return podnet.Invalid("masquerade: network name is empty")
	}
	tx := NewTransaction()
	for _, f := range []Family{IPv4, IPv6} {
		cur, err := b.Save(ctx, f, TableNAT)
		if err != nil {
			return err
		}
		name := m.Chain()
		if cur.Chain(name) == nil {
			continue
		}
		for _, c := range cur.Chains {
			for _, r := range c.Rules {
				if ruleTarget(r) == name {
					pr, err := ParseRule(f, r)
					if err != nil {
						return fmt.Errorf("delete masquerade for network %q: %w", m.Network, err)
					}
					tx.RemoveRule(Chain{f, TableNAT, c.Name}, pr)
				}
			}
		}
		tx.DeleteChain(Chain{f, TableNAT, name})
	}
	if tx.Len() == 0 {
		return nil
	}
	if err := b.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete masquerade for network %q: %w", m.Network, err)
	}
	return nil
}

// ---- the reference bridge plugin's per-container chains ----

// RefChain is a per-container masquerade chain made by the reference CNI
// bridge plugin (containernetworking/plugins, ipMasq: true): a nat chain
// "CNI-" + 24 hex digits of sha512(network + containerID), holding
//
//	-A CNI-xxx -d SUBNET -m comment --comment "name: \"NET\" id: \"ID\"" -j ACCEPT
//	-A CNI-xxx ! -d 224.0.0.0/4 -m comment --comment "name: \"NET\" id: \"ID\"" -j MASQUERADE
//
// and reached by "-A POSTROUTING -s POD_IP/32 -m comment --comment ... -j CNI-xxx".
type RefChain struct {
	Chain       Chain
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
func FindRefChains(ctx context.Context, b Backend, network, containerID string) ([]RefChain, error) {
	var out []RefChain
	for _, f := range []Family{IPv4, IPv6} {
		t, err := b.Save(ctx, f, TableNAT)
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
				rc = &RefChain{Chain: Chain{f, TableNAT, chain}, Network: n, ContainerID: id}
				found[chain] = rc
				order = append(order, chain)
			}
			if jump != "" && !slices.Contains(rc.Jumps, jump) {
				rc.Jumps = append(rc.Jumps, jump)
			}
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				pr, err := ParseRule(f, r)
				if err != nil {
					continue // foreign rule of a shape we do not model
				}
				var comment string
				for _, m := range pr.Matches {
					if cm, ok := m.(Comment); ok {
						comment = string(cm)
					}
				}
				if comment == "" {
					continue
				}
				if j, ok := pr.Target.(Jump); ok && c.Name == "POSTROUTING" {
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
func DeleteRefChains(ctx context.Context, b Backend, network, containerID string) (int, error) {
	chains, err := FindRefChains(ctx, b, network, containerID)
	if err != nil || len(chains) == 0 {
		return 0, err
	}
	tx := NewTransaction()
	for _, rc := range chains {
		for _, j := range rc.Jumps {
			pr, err := ParseRule(rc.Chain.Family, j)
			if err != nil {
				return 0, err
			}
			tx.RemoveRule(Chain{rc.Chain.Family, TableNAT, "POSTROUTING"}, pr)
		}
		tx.DeleteChain(rc.Chain)
	}
	if err := b.Run(ctx, tx); err != nil {
		return 0, fmt.Errorf("delete reference masquerade chains of network %q: %w", network, err)
	}
	return len(chains), nil
}
