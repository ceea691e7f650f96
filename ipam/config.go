package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultDataDir is where host-local keeps its leases when the
// configuration names no dataDir.
const DefaultDataDir = "/var/lib/cni/networks"

// Config is what host-local reads from a network configuration: the
// top-level name and cniVersion, the ipam section, the runtime
// capabilities and the requested addresses.
type Config struct {
	Network    string     // top-level "name"; the directory under DataDir
	CNIVersion string     // top-level "cniVersion"
	Ranges     []RangeSet // canonical; runtimeConfig.ipRanges first, then an old-style top-level range, then ipam.ranges
	DataDir    string     // ipam.dataDir, or DefaultDataDir
	ResolvConf string     // ipam.resolvConf; empty when not set
	// IPs are the requested addresses, in host-local's order: CNI_ARGS IP=,
	// args.cni.ips, then the runtimeConfig "ips" capability.
	IPs []netip.Addr
}

// rawRange mirrors host-local's JSON range; strings keep the parsing (and its
// errors) ours.
type rawRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

type rawConfig struct {
	Name       string `json:"name"`
	CNIVersion string `json:"cniVersion"`
	IPAM       *struct {
		rawRange
		DataDir    string       `json:"dataDir"`
		ResolvConf string       `json:"resolvConf"`
		Ranges     [][]rawRange `json:"ranges"`
	} `json:"ipam"`
	RuntimeConfig struct {
		IPRanges [][]rawRange `json:"ipRanges"`
		IPs      []string     `json:"ips"`
	} `json:"runtimeConfig"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

// ParseConfig reads a network configuration as host-local does: netconf is
// the plugin's stdin, cniArgs the CNI_ARGS environment value
// ("IgnoreUnknown=1;IP=10.1.0.5"). It applies every host-local default and
// returns a *FieldError, or another error matching ErrInvalid, for bad input.
// ParseConfig does not touch the disk.
func ParseConfig(netconf []byte, cniArgs string) (*Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(netconf, &raw); err != nil {
		return nil, fmt.Errorf("%w: decode network configuration: %v", ErrInvalid, err)
	}
	if raw.IPAM == nil {
		return nil, fieldErr("ipam", "", "missing")
	}
	c := &Config{
		Network:    raw.Name,
		CNIVersion: raw.CNIVersion,
		DataDir:    raw.IPAM.DataDir,
		ResolvConf: raw.IPAM.ResolvConf,
	}
	if err := ValidateNetwork(c.Network); err != nil {
		return nil, fmt.Errorf("name: %w", err)
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	var err error
	if c.IPs, err = requestedIPs(&raw, cniArgs); err != nil {
		return nil, err
	}
	sets := raw.rangeSets()
	if len(sets) == 0 {
		return nil, fieldErr("ipam.ranges", "", "no IP ranges specified")
	}
	if c.Ranges, err = parseRangeSets(sets); err != nil {
		return nil, err
	}
	if err := checkAddrsPerFamily(c.CNIVersion, c.Ranges); err != nil {
		return nil, err
	}
	return c, nil
}

// requestedIPs returns the addresses asked for, in host-local's order:
// CNI_ARGS IP=, args.cni.ips, then the runtimeConfig "ips" capability.
func requestedIPs(raw *rawConfig, cniArgs string) ([]netip.Addr, error) {
	var ips []netip.Addr
	if ip, err := parseCNIArgs(cniArgs); err != nil {
		return nil, err
	} else if ip.IsValid() {
		ips = append(ips, ip)
	}
	if raw.Args != nil && raw.Args.CNI != nil {
		for i, s := range raw.Args.CNI.IPs {
			a, err := parseIPOrCIDR(s)
			if err != nil {
				return nil, fieldErr(fmt.Sprintf("args.cni.ips[%d]", i), s, "%v", err)
			}
			ips = append(ips, a)
		}
	}
	for i, s := range raw.RuntimeConfig.IPs {
		a, err := parseIPOrCIDR(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("runtimeConfig.ips[%d]", i), s, "%v", err)
		}
		ips = append(ips, a)
	}
	return ips, nil
}

// namedRangeSet is a range set as written, with its JSON path for errors.
type namedRangeSet struct {
	path string
	set  []rawRange
}

// rangeSets lists the configuration's range sets in Config.Ranges' order:
// runtimeConfig.ipRanges, then an old-style top-level range, then
// ipam.ranges.
func (raw *rawConfig) rangeSets() []namedRangeSet {
	var sets []namedRangeSet
	for i, s := range raw.RuntimeConfig.IPRanges {
		sets = append(sets, namedRangeSet{fmt.Sprintf("runtimeConfig.ipRanges[%d]", i), s})
	}
	if raw.IPAM.Subnet != "" {
		sets = append(sets, namedRangeSet{"ipam", []rawRange{raw.IPAM.rawRange}})
	}
	for i, s := range raw.IPAM.Ranges {
		sets = append(sets, namedRangeSet{fmt.Sprintf("ipam.ranges[%d]", i), s})
	}
	return sets
}

// parseRangeSets parses every set, failing on the first that overlaps one
// before it.
func parseRangeSets(sets []namedRangeSet) ([]RangeSet, error) {
	var out []RangeSet
	for _, ns := range sets {
		set, err := parseRangeSet(ns.path, ns.set)
		if err != nil {
			return nil, err
		}
		for j, prev := range out {
			if prev.Overlaps(set) {
				return nil, fieldErr(ns.path, set.String(), "overlaps range set %d (%s)", j, prev)
			}
		}
		out = append(out, set)
	}
	return out, nil
}

// checkAddrsPerFamily fails when ranges give a family more than one
// address and cniVersion's results cannot hold that: results before spec
// 0.3.0 hold one address per family. An empty cniVersion counts as 0.1.0
// and an unparsable one as too old.
func checkAddrsPerFamily(cniVersion string, ranges []RangeSet) error {
	var v4, v6 int
	for _, set := range ranges {
		if set[0].Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		if ok, _ := version.GreaterThanOrEqualTo(cniVersion, "0.3.0"); !ok {
			return fieldErr("cniVersion", cniVersion, "does not support more than one address per family")
		}
	}
	return nil
}

func parseRangeSet(path string, raw []rawRange) (RangeSet, error) {
	set := make(RangeSet, len(raw))
	for i, rr := range raw {
		p := fmt.Sprintf("%s[%d].", path, i)
		if path == "ipam" {
			p = "ipam."
		}
		var err error
		if set[i], err = rr.parse(p); err != nil {
			return nil, err
		}
	}
	return set.canonical(path)
}

func (rr rawRange) parse(path string) (Range, error) {
	var r Range
	if rr.Subnet == "" {
		return r, fieldErr(path+"subnet", "", "missing")
	}
	p, err := netip.ParsePrefix(rr.Subnet)
	if err != nil {
		return r, fieldErr(path+"subnet", rr.Subnet, "not a CIDR subnet")
	}
	r.Subnet = p
	for _, f := range []struct {
		name string
		s    string
		dst  *netip.Addr
	}{{"rangeStart", rr.RangeStart, &r.RangeStart}, {"rangeEnd", rr.RangeEnd, &r.RangeEnd}, {"gateway", rr.Gateway, &r.Gateway}} {
		if f.s == "" {
			continue
		}
		a, err := netip.ParseAddr(f.s)
		if err != nil || a.Zone() != "" {
			return r, fieldErr(path+f.name, f.s, "not an IP address")
		}
		*f.dst = a.Unmap()
	}
	return r, nil
}

// parseIPOrCIDR accepts "10.1.0.5" or "10.1.0.5/24", as host-local's ips do.
func parseIPOrCIDR(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	return netip.Addr{}, fmt.Errorf("not an IP address")
}

// envArgs is what host-local reads from CNI_ARGS; LoadArgs rejects any
// other key unless IgnoreUnknown is true.
type envArgs struct {
	types.CommonArgs
	IP argIP
}

// argIP is one requested address. Like host-local it takes a single
// address, with or without a prefix length; a comma-separated list is
// refused rather than half-read.
type argIP struct{ netip.Addr }

func (a *argIP) UnmarshalText(b []byte) error {
	ip, err := parseIPOrCIDR(string(b))
	if err != nil {
		return fieldErr("CNI_ARGS IP", string(b), "%v", err)
	}
	a.Addr = ip
	return nil
}

// parseCNIArgs returns the address CNI_ARGS requests with IP=, or the zero
// Addr when it requests none.
func parseCNIArgs(args string) (netip.Addr, error) {
	var a envArgs
	if err := types.LoadArgs(args, &a); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			return netip.Addr{}, fe
		}
		return netip.Addr{}, fieldErr("CNI_ARGS", "", "%s", strings.TrimPrefix(err.Error(), "ARGS: "))
	}
	return a.IP.Addr, nil
}
