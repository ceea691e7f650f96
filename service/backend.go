package service

import (
	"context"
	"log/slog"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// Mode names the layout a Backend writes.
type Mode string

// The two layouts.
const (
	// ModeIptables is kube-proxy's iptables layout, written through
	// iptables-restore (package iptables).
	ModeIptables Mode = "iptables"
	// ModeNftables is a native nf_tables table per family, written over
	// netlink, with a fixed set of rules and the Services as elements of
	// sets and data maps; see the package documentation.
	ModeNftables Mode = "nftables"
)

// Backend is where a Proxy writes its Services: kube-proxy's iptables
// layout through an iptables.Backend (IPTables), or native nftables tables
// in a namespace (Nftables). Only this package implements it, so a Proxy
// cannot be given a mode and a writer that do not belong together.
type Backend interface {
	// Mode names the layout the backend writes.
	Mode() Mode
	// NetNS is the namespace the backend programs, whose UDP conntrack
	// flows the Proxy cleans up; nil when it programs no kernel (an
	// iptables.Fake).
	NetNS() *netns.NS
	// check reports a Backend built from nil.
	check() error
	// plane returns fresh state for one Proxy.
	plane(e *env) plane
}

// IPTables returns the Backend that writes kube-proxy's iptables layout
// through b: an iptables.Kernel in the node's namespace, or an
// iptables.Fake in unit tests.
func IPTables(b iptables.Backend) Backend { return iptablesBackend{b} }

// Nftables returns the Backend that writes the proxy's own nftables table
// per family in ns, over a netlink socket opened there (see the package
// documentation for the layout; NftablesSupported tells whether the
// kernel of ns can take it).
func Nftables(ns *netns.NS) Backend { return nftBackend{ns: ns} }

type iptablesBackend struct{ be iptables.Backend }

func (b iptablesBackend) Mode() Mode { return ModeIptables }

func (b iptablesBackend) NetNS() *netns.NS {
	if k, ok := b.be.(interface{ NetNS() *netns.NS }); ok {
		return k.NetNS()
	}
	return nil
}

func (b iptablesBackend) check() error {
	if b.be == nil {
		return podnet.Invalid("service proxy: IPTables backend without an iptables.Backend")
	}
	return nil
}

func (b iptablesBackend) plane(e *env) plane {
	return &iptablesPlane{env: e, be: b.be, written: map[Name]*rendering{}}
}

type nftBackend struct {
	ns *netns.NS
	// dial opens the socket; nil means one in ns. Tests write through
	// a recorder instead.
	dial func() (nftConn, error)
}

func (b nftBackend) Mode() Mode       { return ModeNftables }
func (b nftBackend) NetNS() *netns.NS { return b.ns }

func (b nftBackend) check() error {
	if b.ns == nil && b.dial == nil {
		return podnet.Invalid("service proxy: Nftables backend without a namespace")
	}
	return nil
}

func (b nftBackend) plane(e *env) plane {
	return newNftPlane(e, b.ns, b.dial)
}

// env is what a backend needs of the Proxy it writes for.
type env struct {
	r   *renderer // the Proxy's; changes only under its sync lock
	log *slog.Logger
	// wanted returns the Service the proxy holds under a name (nil when
	// none): the nftables backend syncs again a Service that waited for
	// an entry another one let go.
	wanted func(Name) *Service
}

// plane is one Backend's state for one Proxy. The Proxy around it keeps
// the model, decides between full and partial syncs and cleans up
// conntrack; a plane keeps its own record of what it wrote, so that a
// partial sync never reads the kernel back.
type plane interface {
	// intact reports whether the proxy's objects are still in the
	// kernel as the last sync left them (the canary).
	intact() (bool, error)
	// verifier returns a check that reads the objects back and reports
	// whether they hold exactly what was written when verifier was
	// called: slower than intact, for a periodic check. The check may run
	// while the plane syncs.
	verifier() func() (bool, error)
	// full rewrites everything from want and returns the rules (or
	// elements) written.
	full(ctx context.Context, want map[Name]*Service) (int, error)
	// partial writes the changed Services only; a nil Service was
	// deleted. It may add Services to changed that the change lets it
	// write now.
	partial(ctx context.Context, changed map[Name]*Service) (int, error)
	// cleanup removes every object of the backend and forgets what was
	// written.
	cleanup(ctx context.Context) error
	// stats counts the Services and endpoints written.
	stats() (services, endpoints int)
}

// NewBackend returns the Backend of mode m that programs ns:
// IPTables(iptables.NewKernel(ns)) or Nftables(ns). It is for programs
// that take the mode as a setting (podnet-service-proxy --backend).
func NewBackend(m Mode, ns *netns.NS) (Backend, error) {
	if ns == nil {
		return nil, podnet.Invalid("service proxy: backend %q without a namespace", m)
	}
	switch m {
	case ModeIptables:
		return IPTables(iptables.NewKernel(ns)), nil
	case ModeNftables:
		return Nftables(ns), nil
	}
	return nil, podnet.Invalid("service proxy: backend %q: want %q or %q", m, ModeIptables, ModeNftables)
}
