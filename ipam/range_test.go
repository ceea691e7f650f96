package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func mp(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ma(s string) netip.Addr   { return netip.MustParseAddr(s) }

// TestRangeDefaults checks every default and rejection of host-local's
// Range.Canonicalize.
func TestRangeDefaults(t *testing.T) {
	tests := []struct {
		name                string
		in                  Range
		start, end, gateway string
		errField            string // non-empty: want a *FieldError for this field
	}{
		{name: "v4 /24", in: Range{Subnet: mp("10.1.0.0/24")}, start: "10.1.0.1", end: "10.1.0.254", gateway: "10.1.0.1"},
		{name: "v4 /16", in: Range{Subnet: mp("10.200.0.0/16")}, start: "10.200.0.1", end: "10.200.255.254", gateway: "10.200.0.1"},
		{name: "v4 /30", in: Range{Subnet: mp("10.1.0.4/30")}, start: "10.1.0.5", end: "10.1.0.6", gateway: "10.1.0.5"},
		{name: "v6 /64", in: Range{Subnet: mp("fd00::/64")}, start: "fd00::1", end: "fd00::ffff:ffff:ffff:ffff", gateway: "fd00::1"},
		{name: "v6 /120", in: Range{Subnet: mp("fd00::/120")}, start: "fd00::1", end: "fd00::ff", gateway: "fd00::1"},
		{name: "v6 /126", in: Range{Subnet: mp("fd00::/126")}, start: "fd00::1", end: "fd00::3", gateway: "fd00::1"},
		{name: "explicit", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.10"), RangeEnd: ma("10.1.0.20"), Gateway: ma("10.1.0.254")},
			start: "10.1.0.10", end: "10.1.0.20", gateway: "10.1.0.254"},
		{name: "gateway outside range but in subnet", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.100"), Gateway: ma("10.1.0.1")},
			start: "10.1.0.100", end: "10.1.0.254", gateway: "10.1.0.1"},
		{name: "start equals end", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.7"), RangeEnd: ma("10.1.0.7")},
			start: "10.1.0.7", end: "10.1.0.7", gateway: "10.1.0.1"},
		{name: "v4-mapped start is unmapped", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("::ffff:10.1.0.9")},
			start: "10.1.0.9", end: "10.1.0.254", gateway: "10.1.0.1"},
		{name: "missing subnet", in: Range{}, errField: "subnet"},
		{name: "host bits set", in: Range{Subnet: mp("10.1.0.1/24")}, errField: "subnet"},
		{name: "v4 /31 too small", in: Range{Subnet: mp("10.1.0.0/31")}, errField: "subnet"},
		{name: "v4 /32 too small", in: Range{Subnet: mp("10.1.0.0/32")}, errField: "subnet"},
		{name: "v6 /127 too small", in: Range{Subnet: mp("fd00::/127")}, errField: "subnet"},
		{name: "gateway outside subnet", in: Range{Subnet: mp("10.1.0.0/24"), Gateway: ma("10.2.0.1")}, errField: "gateway"},
		{name: "gateway of other family", in: Range{Subnet: mp("10.1.0.0/24"), Gateway: ma("fd00::1")}, errField: "gateway"},
		{name: "start outside subnet", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.1.1")}, errField: "rangeStart"},
		{name: "end outside subnet", in: Range{Subnet: mp("10.1.0.0/24"), RangeEnd: ma("10.1.1.1")}, errField: "rangeEnd"},
		{name: "start after end", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.20"), RangeEnd: ma("10.1.0.10")}, errField: "rangeStart"},
		{name: "start after default end", in: Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.255")}, errField: "rangeStart"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.Canonical()
			if tt.errField != "" {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != tt.errField || !errors.Is(err, ErrInvalid) {
					t.Fatalf("Canonical() error = %v, want a FieldError for %q matching ErrInvalid", err, tt.errField)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.RangeStart != ma(tt.start) || got.RangeEnd != ma(tt.end) || got.Gateway != ma(tt.gateway) {
				t.Errorf("Canonical() = %v gw %v, want %s-%s gw %s", got, got.Gateway, tt.start, tt.end, tt.gateway)
			}
		})
	}
}

func TestRangeAllocatable(t *testing.T) {
	r, err := Range{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.0"), RangeEnd: ma("10.1.0.255")}.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{"10.1.0.0": false, "10.1.0.1": false, "10.1.0.255": false, "10.1.0.2": true, "10.1.0.254": true, "10.1.1.2": false} {
		if got := r.Allocatable(ma(a)); got != want {
			t.Errorf("Allocatable(%s) = %v, want %v", a, got, want)
		}
	}
	r6, _ := Range{Subnet: mp("fd00::/120"), RangeStart: ma("fd00::")}.Canonical()
	if r6.Allocatable(ma("fd00::")) || !r6.Allocatable(ma("fd00::ff")) {
		t.Errorf("IPv6: network address allocatable or last address not allocatable")
	}
}

func TestRangeSetCanonical(t *testing.T) {
	tests := []struct {
		name     string
		in       RangeSet
		errField string
	}{
		{name: "two ranges", in: RangeSet{{Subnet: mp("10.1.0.0/24")}, {Subnet: mp("10.2.0.0/24")}}},
		{name: "same subnet disjoint", in: RangeSet{
			{Subnet: mp("10.1.0.0/24"), RangeEnd: ma("10.1.0.100")},
			{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.101")}}},
		{name: "empty", in: RangeSet{}, errField: "ranges[0]"},
		{name: "mixed families", in: RangeSet{{Subnet: mp("10.1.0.0/24")}, {Subnet: mp("fd00::/64")}}, errField: "ranges[0][1].subnet"},
		{name: "overlap", in: RangeSet{{Subnet: mp("10.1.0.0/24")}, {Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.50")}}, errField: "ranges[0][1]"},
		{name: "bad member", in: RangeSet{{Subnet: mp("10.1.0.0/24")}, {Subnet: mp("10.2.0.1/24")}}, errField: "ranges[0][1].subnet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewAllocator(NewMemoryStore(), tt.in)
			if tt.errField == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.errField {
				t.Fatalf("error = %v, want a FieldError for %q", err, tt.errField)
			}
		})
	}
	if _, err := NewAllocator(NewMemoryStore(), RangeSet{{Subnet: mp("10.1.0.0/16")}}, RangeSet{{Subnet: mp("10.1.5.0/24")}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("overlapping sets: error = %v, want ErrInvalid", err)
	}
}

func TestParseConfig(t *testing.T) {
	for _, tt := range parseConfigTests() {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.conf), tt.args)
			if tt.errField != "" {
				var fe *FieldError
				if !errors.Is(err, ErrInvalid) || (tt.errField != "-" && (!errors.As(err, &fe) || fe.Field != tt.errField)) {
					t.Fatalf("error = %v, want ErrInvalid for field %q", err, tt.errField)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// parseConfigTest is a network configuration and CNI_ARGS for ParseConfig,
// with a check of the Config or the field its error must name.
type parseConfigTest struct {
	name     string
	conf     string
	args     string
	check    func(t *testing.T, c *Config)
	errField string // "-" for any ErrInvalid error
}

// parseConfigTests are host-local's defaults, orders and errors, one case
// each.
func parseConfigTests() []parseConfigTest {
	const dd = `"dataDir": "/tmp/x"`
	return []parseConfigTest{
		{name: "defaults", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if c.DataDir != DefaultDataDir || c.Network != "n" || c.Ranges[0][0].Gateway != ma("10.1.0.1") || c.ResolvConf != "" || len(c.IPs) != 0 {
					t.Errorf("config = %+v", c)
				}
			}},
		{name: "old-style range first", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{` + dd + `,"subnet":"10.9.0.0/24","gateway":"10.9.0.254","ranges":[[{"subnet":"fd00::/64"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if len(c.Ranges) != 2 || c.Ranges[0][0].Subnet != mp("10.9.0.0/24") || c.Ranges[0][0].Gateway != ma("10.9.0.254") {
					t.Errorf("ranges = %v", c.Ranges)
				}
			}},
		{name: "ipRanges capability first", conf: `{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ipRanges":[[{"subnet":"10.8.0.0/24"}]]},"ipam":{"ranges":[[{"subnet":"fd00::/64"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if c.Ranges[0][0].Subnet != mp("10.8.0.0/24") {
					t.Errorf("ranges = %v", c.Ranges)
				}
			}},
		{name: "requested addresses in order", args: "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.0.5",
			conf: `{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.1.0.6"]}},"runtimeConfig":{"ips":["10.1.0.7/24"]},"ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if len(c.IPs) != 3 || c.IPs[0] != ma("10.1.0.5") || c.IPs[1] != ma("10.1.0.6") || c.IPs[2] != ma("10.1.0.7") {
					t.Errorf("IPs = %v", c.IPs)
				}
			}},
		{name: "unknown CNI_ARGS", args: "K8S_POD_NAME=x", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS"},
		{name: "bad CNI_ARGS IP", args: "IP=nope", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS IP"},
		{name: "CNI_ARGS IP with prefix", args: "IP=10.1.0.5/24", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`,
			check: func(t *testing.T, c *Config) {
				if len(c.IPs) != 1 || c.IPs[0] != ma("10.1.0.5") {
					t.Errorf("IPs = %v", c.IPs)
				}
			}},
		{name: "CNI_ARGS IP list", args: "IP=10.1.0.5,10.1.0.6", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS IP"},
		{name: "empty CNI_ARGS IP", args: "IP=", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS IP"},
		{name: "CNI_ARGS not KEY=VALUE", args: "IP", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS"},
		{name: "bad IgnoreUnknown", args: "IgnoreUnknown=maybe;X=1", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS"},
		{name: "IgnoreUnknown false", args: "IgnoreUnknown=false;X=1", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "CNI_ARGS"},
		{name: "no ipam", conf: `{"cniVersion":"1.0.0","name":"n"}`, errField: "ipam"},
		{name: "no ranges", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{}}`, errField: "ipam.ranges"},
		{name: "bad JSON", conf: `{`, errField: "-"},
		{name: "bad name", conf: `{"cniVersion":"1.0.0","name":"../etc","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}`, errField: "-"},
		{name: "bad subnet", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0"}]]}}`, errField: "ipam.ranges[0][0].subnet"},
		{name: "bad gateway", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24","gateway":"x"}]]}}`, errField: "ipam.ranges[0][0].gateway"},
		{name: "start outside", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}]]}}`, errField: "ipam.ranges[0][0].rangeStart"},
		{name: "sets overlap", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/25"}]]}}`, errField: "ipam.ranges[1]"},
		{name: "two v4 sets need 0.3.0", conf: `{"cniVersion":"0.2.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]}}`, errField: "cniVersion"},
		{name: "two v4 sets need a cniVersion", conf: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]}}`, errField: "cniVersion"},
		{name: "two v4 sets with a bad cniVersion", conf: `{"cniVersion":"x","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]}}`, errField: "cniVersion"},
		{name: "one set per family needs no cniVersion", conf: `{"name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}}`},
		{name: "two v4 sets with 0.3.1", conf: `{"cniVersion":"0.3.1","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]}}`},
		{name: "empty set", conf: `{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[]]}}`, errField: "ipam.ranges[0]"},
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(`{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.5","rangeEnd":"10.1.0.9","gateway":"10.1.0.1"}],[{"subnet":"fd00::/64"}]]}}`, "IP=10.1.0.6")
	f.Add(`{"cniVersion":"0.2.0","name":"n","ipam":{"subnet":"10.1.0.0/30"}}`, "")
	f.Add(`{"name":"n","runtimeConfig":{"ips":["::ffff:10.1.0.7"],"ipRanges":[[{"subnet":"10.1.0.0/31"}]]},"ipam":{}}`, "IgnoreUnknown=true;X=1")
	f.Fuzz(func(t *testing.T, conf, args string) {
		c, err := ParseConfig([]byte(conf), args)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		if ValidateNetwork(c.Network) != nil || c.DataDir == "" || len(c.Ranges) == 0 {
			t.Fatalf("accepted config %+v", c)
		}
		for i, set := range c.Ranges {
			again, err := set.Canonical()
			if err != nil {
				t.Fatalf("set %d not canonical: %v", i, err)
			}
			for j, r := range set {
				if again[j] != r || !r.Contains(r.RangeStart) || !r.Contains(r.RangeEnd) || !r.Subnet.Contains(r.Gateway) ||
					r.RangeStart.Is4() != r.Subnet.Addr().Is4() || r.RangeStart.Compare(r.RangeEnd) > 0 {
					t.Fatalf("set %d range %d inconsistent: %+v", i, j, r)
				}
			}
			for _, prev := range c.Ranges[:i] {
				if prev.Overlaps(set) {
					t.Fatalf("overlapping sets accepted: %v %v", prev, set)
				}
			}
		}
		for _, a := range c.IPs {
			if !a.IsValid() || a.Is4In6() || strings.Contains(a.String(), "%") {
				t.Fatalf("bad requested address %v", a)
			}
		}
	})
}
