package iptables

import (
	"context"
	"fmt"
	"os/exec"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns"
)

// NewKernelMode returns the backend for the tables of ns that runs the
// binaries of mode m: iptables-nft-restore, iptables-nft-save and
// iptables-nft for ModeNFT, their -legacy variants for ModeLegacy, and the
// system's defaults for the zero Mode (NewKernel). It fails with
// ErrInvalid for any other m. Nothing is executed until it is used.
func NewKernelMode(ns *netns.NS, m Mode) (*Kernel, error) {
	if !m.Valid() {
		return nil, podnet.Invalid("iptables mode %q: want %q or %q", m, ModeNFT, ModeLegacy)
	}
	k := NewKernel(ns)
	k.mode = m
	return k, nil
}

// Mode returns the backend k runs the binaries of; the zero Mode means
// the system's default iptables.
func (k *Kernel) Mode() Mode { return k.mode }

// tool names the binary k runs for tool of family f.
func (k *Kernel) tool(f Family, tool string) string { return binaryOf(k.mode, f, tool) }

// DetectMode tells which backend the iptables of ns is used through, as
// kube-proxy's iptables-wrapper decides it: kubelet's KUBE-IPTABLES-HINT
// or KUBE-KUBELET-CANARY chain in the mangle table of iptables-nft means
// ModeNFT; in iptables-legacy, ModeLegacy; without them, the variant
// holding more rules (in both families) wins, and a tie (a namespace
// nobody has written rules to) is ModeNFT. When only one variant is
// installed, that one is the answer. It only reads: iptables-legacy is
// saved whole, because asking it for one table would create that table.
// It fails when neither variant can be run.
//
// Equivalent to: iptables-nft-save -t mangle; ip6tables-nft-save -t mangle;
// iptables-legacy-save; ip6tables-legacy-save; iptables-nft-save; ip6tables-nft-save
func DetectMode(ctx context.Context, ns *netns.NS) (Mode, error) {
	nftOK, legacyOK := installed(ModeNFT), installed(ModeLegacy)
	switch {
	case !nftOK && !legacyOK:
		return "", &podnet.OpError{Op: "detect", Kind: "iptables mode", NetNS: ns.String(),
			Err: fmt.Errorf("%w: neither iptables-nft-save nor iptables-legacy-save is installed", podnet.ErrNotFound)}
	case !legacyOK:
		return ModeNFT, nil
	case !nftOK:
		return ModeLegacy, nil
	}
	// Like iptables-wrapper, read what can be read: a save that fails (no
	// ip6tables, no such table) counts as empty.
	read := func(m Mode, args ...string) func() string {
		return func() string { return saveBoth(ctx, ns, m, args...) }
	}
	m, _ := decideMode(modeSaves{nftMangle: read(ModeNFT, "-t", "mangle"), legacy: read(ModeLegacy), nft: read(ModeNFT)})
	if err := ctx.Err(); err != nil {
		return "", &podnet.OpError{Op: "detect", Kind: "iptables mode", NetNS: ns.String(), Err: err}
	}
	return m, nil
}

// installed reports whether the IPv4 save binary of mode m is on PATH.
func installed(m Mode) bool {
	_, err := exec.LookPath(binaryOf(m, IPv4, "-save"))
	return err == nil
}

// saveBoth returns the iptables-save output of both families in mode m;
// a family whose save fails adds nothing.
func saveBoth(ctx context.Context, ns *netns.NS, m Mode, args ...string) string {
	var out []byte
	for _, f := range []Family{IPv4, IPv6} {
		if b, err := execns.Output(ctx, ns, nil, binaryOf(m, f, "-save"), args...); err == nil {
			out = append(out, b...)
		}
	}
	return string(out)
}
