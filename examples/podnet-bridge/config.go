package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/link"
)

// netConf is the reference bridge plugin's configuration, key for key.
type netConf struct {
	types.NetConf
	Bridge           string `json:"bridge"`
	IsGateway        bool   `json:"isGateway"`
	IsDefaultGateway bool   `json:"isDefaultGateway"`
	ForceAddress     bool   `json:"forceAddress"`
	IPMasq           bool   `json:"ipMasq"`
	IPMasqBackend    string `json:"ipMasqBackend,omitempty"`
	MTU              int    `json:"mtu"`
	HairpinMode      bool   `json:"hairpinMode"`
	PromiscMode      bool   `json:"promiscMode"`
	// PolicySocket, podnet's own key, is the unix socket of the node's
	// NetworkPolicy agent: ADD tells it the pod's addresses and returns
	// once its policies are in force (package policy/cnisock). Absent,
	// the plugin does what the reference plugin does.
	PolicySocket string `json:"policySocket,omitempty"`

	Args struct {
		Cni struct {
			Mac string `json:"mac,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	RuntimeConfig struct {
		Mac string   `json:"mac,omitempty"`
		IPs []string `json:"ips,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	mac     net.HardwareAddr // from CNI_ARGS MAC=, args.cni.mac or runtimeConfig.mac
	rawIPAM json.RawMessage  // the "ipam" object as given
}

// unsupported lists keys of the reference plugin that change its behaviour
// and that podnet-bridge does not implement, with the value that is
// harmless (the reference default). Any other value is refused rather than
// silently ignored.
var unsupported = map[string]any{
	"vlan":                      0.0,
	"vlanTrunk":                 nil,
	"macspoofchk":               false,
	"enabledad":                 false,
	"disableContainerInterface": false,
	"portIsolation":             false,
}

const defaultBridge = "cni0"

// cniArgs is what the plugin accepts in CNI_ARGS; any other key is refused
// unless IgnoreUnknown is true. IP= is the IPAM plugin's to read, but it is
// named here so that it needs no IgnoreUnknown, as when host-local is run
// on its own.
type cniArgs struct {
	types.CommonArgs
	MAC types.UnmarshallableString
	IP  types.UnmarshallableString
}

// rangeSubnets returns the subnets of the IPAM ranges of the configuration
// (host-local's "ranges" and its legacy "subnet"), whatever the IPAM type.
func (n *netConf) rangeSubnets() []netip.Prefix {
	var ipam struct {
		Subnet string `json:"subnet"`
		Ranges [][]struct {
			Subnet string `json:"subnet"`
		} `json:"ranges"`
	}
	json.Unmarshal(n.rawIPAM, &ipam)
	var out []netip.Prefix
	add := func(s string) {
		if p, err := netip.ParsePrefix(s); err == nil && !slices.Contains(out, p.Masked()) {
			out = append(out, p.Masked())
		}
	}
	add(ipam.Subnet)
	for _, set := range ipam.Ranges {
		for _, r := range set {
			add(r.Subnet)
		}
	}
	return out
}

// configError is a CNI error with a code; the plugin prints it as the
// spec's error object.
func configError(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

// loadConf parses and validates stdin and CNI_ARGS. Errors are *types.Error
// with code 6 (undecodable JSON) or 7 (invalid configuration).
func loadConf(stdin []byte, envArgs string) (*netConf, error) {
	n := &netConf{Bridge: defaultBridge}
	if err := json.Unmarshal(stdin, n); err != nil {
		return nil, configError(types.ErrDecodingFailure, "decode network configuration: %v", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, configError(types.ErrDecodingFailure, "decode network configuration: %v", err)
	}
	var rawIPAM struct {
		IPAM json.RawMessage `json:"ipam"`
	}
	json.Unmarshal(stdin, &rawIPAM)
	n.rawIPAM = rawIPAM.IPAM
	for key, harmless := range unsupported {
		v, ok := raw[key]
		if list, isList := v.([]any); !ok || v == nil || v == harmless || isList && len(list) == 0 {
			continue
		}
		return nil, configError(types.ErrInvalidNetworkConfig, "%q is not supported by podnet-bridge (use the reference bridge plugin for it)", key)
	}
	switch n.IPMasqBackend {
	case "", "iptables", "nftables":
	default:
		return nil, configError(types.ErrInvalidNetworkConfig, "ipMasqBackend %q: want \"iptables\" or \"nftables\"", n.IPMasqBackend)
	}
	if n.Name == "" {
		return nil, configError(types.ErrInvalidNetworkConfig, "network configuration has no name")
	}
	if err := link.ValidateName(n.Bridge); err != nil {
		return nil, configError(types.ErrInvalidNetworkConfig, "bridge: %v", err)
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		return nil, configError(types.ErrInvalidNetworkConfig, "mtu %d: outside 68..65535", n.MTU)
	}
	if err := validatePolicySocket(n.PolicySocket); err != nil {
		return nil, err
	}
	if n.HairpinMode && n.PromiscMode {
		return nil, configError(types.ErrInvalidNetworkConfig, "hairpinMode and promiscMode cannot both be set")
	}
	if n.IsDefaultGateway {
		n.IsGateway = true
	}

	var env cniArgs
	if err := types.LoadArgs(envArgs, &env); err != nil {
		return nil, configError(types.ErrInvalidNetworkConfig, "CNI_ARGS: %s", strings.TrimPrefix(err.Error(), "ARGS: "))
	}
	mac := string(env.MAC)
	if n.Args.Cni.Mac != "" {
		mac = n.Args.Cni.Mac
	}
	if n.RuntimeConfig.Mac != "" {
		mac = n.RuntimeConfig.Mac
	}
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return nil, configError(types.ErrInvalidNetworkConfig, "mac %q: not a 6-byte unicast address", mac)
		}
		n.mac = hw
	}
	for _, s := range n.RuntimeConfig.IPs {
		if _, err := netip.ParsePrefix(s); err != nil {
			if _, err := netip.ParseAddr(s); err != nil {
				return nil, configError(types.ErrInvalidNetworkConfig, "runtimeConfig.ips: %q is not an address", s)
			}
		}
	}
	return n, nil
}
