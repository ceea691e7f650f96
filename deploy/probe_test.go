package deploy

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// served are the paths package daemon's servers answer on every address
// a program serves (--metrics-addr adds /metrics).
var served = map[string]bool{"/healthz": true, "/livez": true}

// addrFlags are the flags by which the programs choose where they serve.
var addrFlags = []string{"metrics-addr", "healthz-addr"}

// TestProbes: each program's container has a readiness probe on /healthz
// (the program's own judgement of its work) and a liveness probe on
// /livez (the process serves at all), both on a port the container's
// flags make the program serve, on an address the probe reaches: kubelet
// probes a host-network pod at the node's address unless the probe names
// a host, so a program serving on loopback must be probed there.
func TestProbes(t *testing.T) {
	m := mustLoad(t)
	for _, ds := range m.daemonSets {
		c := ds.Spec.Template.Spec.Containers[0]
		t.Run(c.Name, func(t *testing.T) {
			for _, p := range []struct {
				kind  string
				probe *corev1.Probe
				path  string
			}{{"readiness", c.ReadinessProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/livez"}} {
				if p.probe == nil || p.probe.HTTPGet == nil {
					t.Errorf("no %s httpGet probe", p.kind)
					continue
				}
				g := p.probe.HTTPGet
				if g.Path != p.path || !served[g.Path] {
					t.Errorf("%s probe path %q, want %s", p.kind, g.Path, p.path)
				}
				if _, err := probeTarget(c, g, netip.MustParseAddr("192.0.2.10")); err != nil {
					t.Errorf("%s probe: %v", p.kind, err)
				}
			}
		})
	}
}

// probeTarget is where kubelet sends probe g of container c on a node
// whose address is nodeIP: the probe's host, or the node's. It fails
// unless one of c's address flags makes the program serve there.
func probeTarget(c corev1.Container, g *corev1.HTTPGetAction, nodeIP netip.Addr) (netip.AddrPort, error) {
	if g.Port.Type != 0 {
		return netip.AddrPort{}, fmt.Errorf("port %q is named; the program's ports have no names", g.Port.String())
	}
	host := nodeIP
	if g.Host != "" {
		var err error
		if host, err = netip.ParseAddr(g.Host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("host %q: %v", g.Host, err)
		}
	}
	dst := netip.AddrPortFrom(host, uint16(g.Port.IntVal))
	var have []string
	for _, f := range addrFlags {
		v := flagValue(c.Args, f)
		if v == "" {
			continue
		}
		have = append(have, "--"+f+"="+v)
		h, port, err := net.SplitHostPort(v)
		if err != nil || port != g.Port.String() {
			continue
		}
		if h == "" || h == "0.0.0.0" || h == "::" {
			return dst, nil
		}
		if a, err := netip.ParseAddr(h); err == nil && a == host {
			return dst, nil
		}
	}
	return dst, fmt.Errorf("kubelet would ask %s, where the program does not serve (%s)", dst, strings.Join(have, ", "))
}

// TestFlags: every flag the containers pass is one the program defines.
func TestFlags(t *testing.T) {
	m := mustLoad(t)
	for _, ds := range m.daemonSets {
		for _, c := range allContainers(ds) {
			defined := programFlags(t, c.Command[0])
			for _, a := range append(c.Command[1:], c.Args...) {
				name, ok := strings.CutPrefix(a, "--")
				if !ok {
					continue // a positional argument
				}
				name, _, _ = strings.Cut(name, "=")
				if !defined[name] {
					t.Errorf("%s/%s: %s defines no flag --%s", ds.Name, c.Name, c.Command[0], name)
				}
			}
		}
	}
}

var usageFlag = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)

// programFlags returns the flags the program of the image path (e.g.
// /podnet-agent) lists in its -h usage.
func programFlags(t *testing.T, imagePath string) map[string]bool {
	t.Helper()
	bin := filepath.Join(binDir, filepath.Base(imagePath))
	out, err := exec.Command(bin, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -h: %v\n%s", bin, err, out)
	}
	flags := map[string]bool{}
	for _, sm := range usageFlag.FindAllStringSubmatch(string(out), -1) {
		flags[sm[1]] = true
	}
	if len(flags) < 3 {
		t.Fatalf("%s -h lists no flags:\n%s", bin, out)
	}
	return flags
}
