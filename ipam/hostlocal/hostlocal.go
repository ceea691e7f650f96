// Package hostlocal is host-local IPAM as a CNI plugin sees it: the ADD,
// DEL, CHECK, GC and STATUS verbs over the ipam package's disk store, with
// host-local's configuration keys, routes and resolvConf, and CNI error
// codes. It reads and writes the same files under dataDir as the reference
// host-local plugin, so a node can switch between the two.
//
// A plugin that allocates addresses calls it in-process (no IPAM binary to
// exec); a standalone IPAM plugin is skel.PluginMainFuncs around Add, Del,
// Check, GC and Status (examples/podnet-host-local).
package hostlocal

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/ipam"
)

// netConf holds what ipam.ParseConfig leaves to the plugin: the CNI types
// of routes and valid attachments, and the previous result.
type netConf struct {
	types.NetConf
	IPAM struct {
		Routes []*types.Route `json:"routes"`
	} `json:"ipam"`
}

// load parses stdin and opens the store, turning bad input into CNI error
// codes.
func load(args *skel.CmdArgs) (*ipam.Config, *netConf, *ipam.DiskStore, error) {
	if !json.Valid(args.StdinData) {
		return nil, nil, nil, types.NewError(types.ErrDecodingFailure, "decode network configuration", "not valid JSON")
	}
	cfg, err := ipam.ParseConfig(args.StdinData, args.Args)
	if err != nil {
		return nil, nil, nil, Error(err)
	}
	var n netConf
	if err := json.Unmarshal(args.StdinData, &n); err != nil {
		return nil, nil, nil, types.NewError(types.ErrDecodingFailure, "decode network configuration", err.Error())
	}
	store, err := ipam.NewDiskStore(cfg.DataDir, cfg.Network)
	if err != nil {
		return nil, nil, nil, Error(err)
	}
	return cfg, &n, store, nil
}

// Error maps podnet errors to CNI error codes: 7 for invalid input, 11 when
// the data directory's lock could not be had in time, 999 otherwise.
func Error(err error) error {
	var te *types.Error
	switch {
	case errors.As(err, &te):
		return te
	case errors.Is(err, ipam.ErrInvalid):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.Is(err, context.DeadlineExceeded):
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	default:
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
}

func owner(args *skel.CmdArgs) (ipam.Owner, error) {
	o := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	if err := o.Validate(); err != nil {
		return o, Error(err)
	}
	return o, nil
}

// Every verb waits for the data directory's lock until ctx is done; a
// deadline there is answered with CNI error 11 (try again later).

// Add allocates the attachment's addresses (or returns those it already
// holds) and returns the result with the configuration's routes and DNS, and
// the cniVersion to print it in.
func Add(ctx context.Context, args *skel.CmdArgs) (*current.Result, string, error) {
	cfg, n, store, err := load(args)
	if err != nil {
		return nil, "", err
	}
	o, err := owner(args)
	if err != nil {
		return nil, "", err
	}
	result := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: n.IPAM.Routes}
	if cfg.ResolvConf != "" {
		dns, err := parseResolvConf(cfg.ResolvConf)
		if err != nil {
			return nil, "", Error(fmt.Errorf("read resolvConf: %w", err))
		}
		result.DNS = *dns
	}
	alloc, err := ipam.NewAllocator(store, cfg.Ranges...)
	if err != nil {
		return nil, "", Error(err)
	}
	leases, err := alloc.Allocate(ctx, o, cfg.IPs...)
	if err != nil {
		return nil, "", Error(err)
	}
	for _, l := range leases {
		ipc := &current.IPConfig{Address: ipNet(l.Address)}
		if l.Gateway.IsValid() {
			ipc.Gateway = l.Gateway.AsSlice()
		}
		result.IPs = append(result.IPs, ipc)
	}
	return result, cfg.CNIVersion, nil
}

// Del releases every address of the attachment; none is not an error.
func Del(ctx context.Context, args *skel.CmdArgs) error {
	cfg, _, store, err := load(args)
	if err != nil {
		return err
	}
	o, err := owner(args)
	if err != nil {
		return err
	}
	alloc, err := ipam.NewAllocator(store, cfg.Ranges...)
	if err != nil {
		return Error(err)
	}
	if _, err := alloc.Release(ctx, o); err != nil {
		return Error(err)
	}
	return nil
}

// Check succeeds, like host-local, when the attachment holds at least
// one lease in the network; with a previous result, every address in it
// must be leased to the attachment.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	_, n, store, err := load(args)
	if err != nil {
		return err
	}
	o, err := owner(args)
	if err != nil {
		return err
	}
	if err := store.Lock(ctx); err != nil {
		return Error(err)
	}
	held, err := store.Owned(o)
	if uerr := store.Unlock(); err == nil {
		err = uerr
	}
	if err != nil {
		return Error(err)
	}
	if len(held) == 0 {
		return fmt.Errorf("host-local: no address leased to container %s interface %s", o.ContainerID, o.IfName)
	}
	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.NetConf); err != nil {
			return types.NewError(types.ErrDecodingFailure, "parse prevResult", err.Error())
		}
		prev, err := current.NewResultFromResult(n.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "convert prevResult", err.Error())
		}
		for _, ipc := range prev.IPs {
			a, ok := netip.AddrFromSlice(ipc.Address.IP)
			if a = a.Unmap(); ok && !slices.Contains(held, a) {
				return fmt.Errorf("host-local: address %s of the previous result is not leased to container %s interface %s", a, o.ContainerID, o.IfName)
			}
		}
	}
	return nil
}

// GC releases the leases of attachments missing from
// cni.dev/valid-attachments and names them on stderr.
func GC(ctx context.Context, args *skel.CmdArgs) error {
	_, n, store, err := load(args)
	if err != nil {
		return err
	}
	valid := make([]ipam.Owner, 0, len(n.ValidAttachments))
	for _, a := range n.ValidAttachments {
		valid = append(valid, ipam.Owner{ContainerID: strings.TrimSpace(a.ContainerID), IfName: a.IfName})
	}
	gone, err := ipam.GC(ctx, store, valid)
	for _, l := range gone {
		fmt.Fprintf(os.Stderr, "host-local: GC released %s of %s\n", l.Addr, l.Owner)
	}
	if err != nil {
		return Error(err)
	}
	return nil
}

// Status reports whether ADD could work: the configuration is valid and
// the data directory can be locked.
func Status(ctx context.Context, args *skel.CmdArgs) error {
	_, _, store, err := load(args)
	if err != nil {
		return err
	}
	if err := store.Lock(ctx); err != nil {
		return types.NewError(errPluginNotAvailable, "lock IPAM data directory", err.Error())
	}
	if err := store.Unlock(); err != nil {
		return types.NewError(errPluginNotAvailable, "unlock IPAM data directory", err.Error())
	}
	return nil
}

// ipNet converts an address for a CNI result. (Package cni has the same
// conversion; this package does not import it, to keep IPAM free of
// netlink.)
func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// parseResolvConf reads nameserver, domain, search and options lines, as
// host-local does.
func parseResolvConf(path string) (*types.DNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var dns types.DNS
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, fields[1])
		case "domain":
			dns.Domain = fields[1]
		case "search":
			dns.Search = append(dns.Search, fields[1:]...)
		case "options":
			dns.Options = append(dns.Options, fields[1:]...)
		}
	}
	return &dns, sc.Err()
}

// errPluginNotAvailable is the CNI 1.1 STATUS code "plugin not available",
// which the cni module's types do not name.
const errPluginNotAvailable uint = 50
