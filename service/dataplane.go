package service

import (
	"context"

	"github.com/podnet/podnet/conntrack"
)

// Mode selects how a Proxy programs the kernel.
type Mode string

// The proxy modes.
const (
	// ModeIptables writes kube-proxy's iptables layout through
	// iptables-restore (package iptables). "" means ModeIptables.
	ModeIptables Mode = "iptables"
	// ModeNftables writes a native nf_tables table per family over
	// netlink, with a fixed set of rules and the Services as elements of
	// data maps; see the package documentation.
	ModeNftables Mode = "nftables"
)

// plane is what a mode does; the Proxy around it keeps the model, decides
// between full and partial syncs, and cleans up conntrack.
type plane interface {
	// intact reports whether the proxy's objects are still in the
	// kernel as the last sync left them (the canary).
	intact() (bool, error)
	// full rewrites everything from want; partial writes the dirty
	// Services only (want holds those that still exist). Both return the
	// conntrack flows to delete.
	full(ctx context.Context, want map[Name]*Service) (SyncResult, []conntrack.Filter, error)
	partial(ctx context.Context, dirty map[Name]bool, want map[Name]*Service) (SyncResult, []conntrack.Filter, error)
	// cleanup removes every object of the mode and forgets what was
	// written.
	cleanup(ctx context.Context) error
	// stats counts the Services and endpoints written.
	stats() (services, endpoints int)
}

// iptablesPlane is ModeIptables: the methods of Proxy in sync.go.
type iptablesPlane struct{ p *Proxy }

func (ip iptablesPlane) intact() (bool, error) { return ip.p.canaryOK() }
func (ip iptablesPlane) full(ctx context.Context, want map[Name]*Service) (SyncResult, []conntrack.Filter, error) {
	return ip.p.syncFull(ctx, want)
}
func (ip iptablesPlane) partial(ctx context.Context, dirty map[Name]bool, want map[Name]*Service) (SyncResult, []conntrack.Filter, error) {
	return ip.p.syncPartial(ctx, dirty, want)
}
func (ip iptablesPlane) cleanup(ctx context.Context) error { return ip.p.cleanupTables(ctx) }
func (ip iptablesPlane) stats() (services, endpoints int) {
	for _, rec := range ip.p.written {
		services++
		endpoints += rec.r.endpoints
	}
	return services, endpoints
}
