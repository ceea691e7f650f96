package iptables

import (
	"fmt"
	"regexp"
	"strings"
)

// Mode is the iptables backend a node uses: iptables-nft, which keeps the
// rules in nf_tables, or iptables-legacy, which keeps them in the x_tables
// tables of ip_tables. Debian's iptables package ships both variants of
// every tool (iptables-nft-restore, iptables-legacy-restore …); the plain
// names point at one of them through alternatives. Rules written with one
// variant are invisible to the other's save and are evaluated beside them
// by the kernel, so a component must write to the backend the rest of the
// node (kubelet, kube-proxy) uses: see DetectMode.
//
// The zero Mode means the system's default binaries (iptables-restore …),
// which is what NewKernel uses.
type Mode string

// The two backends.
const (
	ModeNFT    Mode = "nft"
	ModeLegacy Mode = "legacy"
)

// Valid reports whether m is the zero Mode, ModeNFT or ModeLegacy.
func (m Mode) Valid() bool { return m == "" || m == ModeNFT || m == ModeLegacy }

// binaryOf names the program for tool ("-restore", "-save", or "" for
// iptables itself) of family f in mode m: ip6tables-legacy-save for
// (ModeLegacy, IPv6, "-save").
func binaryOf(m Mode, f Family, tool string) string {
	b := "iptables"
	if f == IPv6 {
		b = "ip6tables"
	}
	if m != "" {
		b += "-" + string(m)
	}
	return b + tool
}

// kubeletChains are the chains kubelet (1.17 and later) creates in the
// mangle table of the backend it uses; kube-proxy's iptables-wrapper reads
// the node's mode from them.
var kubeletChains = regexp.MustCompile(`(?m)^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) `)

// savedRules counts the rules ("-A …" lines) of iptables-save output.
func savedRules(save string) int {
	n := 0
	for line := range strings.SplitSeq(save, "\n") {
		if strings.HasPrefix(line, "-") {
			n++
		}
	}
	return n
}

// modeSaves reads what decideMode needs, each when it is first needed:
// iptables-save output of both families for one variant, of the mangle
// table only or of every table.
type modeSaves struct {
	nftMangle, legacy, nft func() string
}

// decideMode is kube-proxy's iptables-wrapper decision
// (kubernetes-sigs/iptables-wrappers): kubelet's chains in iptables-nft's
// mangle table mean nft; in iptables-legacy (read whole, since asking
// legacy for one table creates it), legacy; otherwise the variant holding
// more rules, nft on a tie. It returns the mode and why.
func decideMode(s modeSaves) (Mode, string) {
	if kubeletChains.MatchString(s.nftMangle()) {
		return ModeNFT, "kubelet's chains are in iptables-nft"
	}
	legacy := s.legacy()
	if kubeletChains.MatchString(legacy) {
		return ModeLegacy, "kubelet's chains are in iptables-legacy"
	}
	nl, nn := savedRules(legacy), savedRules(s.nft())
	if nl > nn {
		return ModeLegacy, fmt.Sprintf("no kubelet chains; iptables-legacy holds more rules (%d) than iptables-nft (%d)", nl, nn)
	}
	return ModeNFT, fmt.Sprintf("no kubelet chains; iptables-legacy holds no more rules (%d) than iptables-nft (%d)", nl, nn)
}
