package cni

import (
	"fmt"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrInvalid  = podnet.ErrInvalid
)

// ConfigureIface puts the addresses and routes of r on ifName inside pod.
// A route without a gateway goes through the gateway of the first address
// of its family, as the reference plugins do. The interface must exist;
// it is not brought up (veth.Create makes the pod end up). Addresses and
// routes already present are left as they are, so a repeated call
// converges.
//
// Equivalent to: ip addr add ADDR dev IFNAME; ip route replace DST via GW dev IFNAME
func ConfigureIface(pod *netns.NS, ifName string, r *current.Result) error {
	if r == nil {
		return podnet.Invalid("configure %q: no result", ifName)
	}
	routes, err := routesOf(ifName, r)
	if err != nil {
		return err
	}
	for _, ipc := range r.IPs {
		if err := addr.Ensure(pod, ifName, Prefix(ipc.Address)); err != nil {
			return err
		}
	}
	for _, rt := range routes {
		if err := route.Replace(pod, rt); err != nil {
			return err
		}
	}
	return nil
}

// CheckIface verifies that ifName inside pod has every address and every
// route of r, as a CNI CHECK must; the first missing one is returned as an
// error matching ErrNotFound.
//
// Equivalent to: ip addr show dev IFNAME; ip route show
func CheckIface(pod *netns.NS, ifName string, r *current.Result) error {
	if r == nil {
		return podnet.Invalid("check %q: no result", ifName)
	}
	want, err := routesOf(ifName, r)
	if err != nil {
		return err
	}
	have, err := addr.List(pod, ifName)
	if err != nil {
		return err
	}
	for _, ipc := range r.IPs {
		if p := Prefix(ipc.Address); !slices.Contains(have, p) {
			return fmt.Errorf("check %s in netns %q: lacks address %s: %w", ifName, pod, p, podnet.ErrNotFound)
		}
	}
	routes, err := route.List(pod, route.Filter{})
	if err != nil {
		return err
	}
	for _, w := range want {
		found := slices.ContainsFunc(routes, func(rt route.Route) bool {
			return rt.Dst == w.Dst && (!w.Gateway.IsValid() || rt.Gateway == w.Gateway)
		})
		if !found {
			return fmt.Errorf("check %s in netns %q: lacks route %s via %v: %w", ifName, pod, w.Dst, w.Gateway, podnet.ErrNotFound)
		}
	}
	return nil
}

// routesOf returns the routes of r as podnet routes on ifName, each with a
// gateway when r names one for its family.
func routesOf(ifName string, r *current.Result) ([]route.Route, error) {
	var out []route.Route
	for _, ipc := range r.IPs {
		if !Prefix(ipc.Address).IsValid() {
			return nil, podnet.Invalid("configure %q: invalid address %v", ifName, ipc.Address)
		}
	}
	for _, rt := range r.Routes {
		if rt == nil {
			continue
		}
		dst := Prefix(rt.Dst)
		if !dst.IsValid() {
			return nil, podnet.Invalid("configure %q: invalid route destination %v", ifName, rt.Dst)
		}
		gw := Addr(rt.GW)
		if !gw.IsValid() {
			for _, ipc := range r.IPs {
				if a := Addr(ipc.Gateway); a.IsValid() && a.Is4() == dst.Addr().Is4() {
					gw = a
					break
				}
			}
		}
		out = append(out, route.Route{Dst: dst.Masked(), Gateway: gw, Dev: ifName, Metric: rt.Priority})
	}
	return out, nil
}
