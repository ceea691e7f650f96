package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/testenv/refbin"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/veth"
)

// cnitool runs the pinned cnitool inside the node namespace, as an
// operator would with `ip netns exec`. Its result cache (always under
// /var/lib/cni) goes to the node's own temporary directory, bind-mounted
// over /var/lib in a private mount namespace, so nothing is left on the
// machine.
func cnitool(t *testing.T, n *node, confDir string, env []string, args ...string) (string, error) {
	t.Helper()
	tool := refbin.Path(t, "cnitool")
	script := `mount --bind "$PODNET_CACHE" /var/lib && exec "$0" "$@"`
	var out []byte
	err := n.ns.Do(func() error {
		cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, tool}, args...)...)
		cmd.Env = append([]string{
			"PATH=" + os.Getenv("PATH"),
			"CNI_PATH=" + pluginDir + ":" + refbin.Dir(),
			"NETCONFPATH=" + confDir,
			"PODNET_CACHE=" + n.cacheDir,
		}, env...)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return string(out), err
}

// TestCnitoolWithPortmap chains the reference portmap plugin after ours
// in a conflist, as operators do for hostPort, and sends traffic from a
// client namespace to the node's port 8080, which portmap forwards to the
// pod's port 80.
func TestCnitoolWithPortmap(t *testing.T) {
	refbin.Path(t, "portmap")
	n := newNode(t)
	// The node's external side: node 10.240.0.10 ⟷ client 10.240.0.20.
	client := nstest.New(t)
	if _, err := veth.Create(n.ns, veth.Spec{Name: "ens0", PeerName: "eth0", PeerNS: client}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		ns  *netns.NS
		dev string
		p   string
	}{{n.ns, "ens0", "10.240.0.10/24"}, {client, "eth0", "10.240.0.20/24"}} {
		if err := addr.Ensure(a.ns, a.dev, netip.MustParsePrefix(a.p)); err != nil {
			t.Fatal(err)
		}
	}

	confDir := t.TempDir()
	list := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "podnet",
		"plugins": []any{
			json.RawMessage(n.conf("1.0.0", map[string]any{"ipMasq": false, "cniVersion": nil, "name": nil})),
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		},
	}
	b, _ := json.Marshal(list)
	if err := os.WriteFile(filepath.Join(confDir, "10-podnet.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	pod := nstest.NewNamed(t)
	capArgs := `CAP_ARGS={"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`
	out, err := cnitool(t, n, confDir, []string{capArgs}, "add", "podnet", pod.Path())
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var res current.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("cnitool add printed %q (%v)", out, err)
	}
	podAddr := netip.MustParseAddr(res.IPs[0].Address.IP.String())

	srv, err := probe.Serve(pod, netip.AddrPortFrom(podAddr, 80), "pod")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r, err := probe.Ask(client, "tcp", netip.MustParseAddrPort("10.240.0.10:8080"), 3*time.Second)
	if err != nil {
		t.Fatalf("client → node:8080 → pod:80: %v", err)
	}
	if r.Name != "pod" {
		t.Fatalf("answered by %q", r.Name)
	}

	if out, err := cnitool(t, n, confDir, []string{capArgs}, "check", "podnet", pod.Path()); err != nil {
		t.Fatalf("cnitool check: %v\n%s", err, out)
	}
	if out, err := cnitool(t, n, confDir, []string{capArgs}, "del", "podnet", pod.Path()); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if l := n.leases("podnet"); len(l) != 0 {
		t.Errorf("leases after del: %v", l)
	}
	if left := n.vethsGone(); len(left) != 0 {
		t.Errorf("veths after del: %v", left)
	}
	var rules []byte
	n.ns.Do(func() error {
		rules, err = exec.Command("iptables-save", "-t", "nat").Output()
		return err
	})
	if strings.Contains(string(rules), "8080") {
		t.Errorf("portmap rules left:\n%s", rules)
	}
	_ = fmt.Sprint
}
