package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// ConflistName is the file the agent writes in --cni-conf-dir. Runtimes
// load the lexically first .conflist of the directory; "10-" sorts before
// most others, as flannel's 10-flannel.conflist does.
const ConflistName = "10-podnet.conflist"

// conflistSpec is what the CNI configuration depends on.
type conflistSpec struct {
	Bridge   string
	PodCIDRs []netip.Prefix
	IPAM     string // IPAM plugin type, "host-local"
	DataDir  string // host-local's dataDir; "" leaves its default
	// PolicySocket is the NetworkPolicy enforcer's socket podnet-bridge
	// tells new pods' addresses to; "" leaves it out.
	PolicySocket string
}

// conflist renders the network configuration list a runtime needs to start
// pods on this node: podnet-bridge on the bridge as the pods' gateway,
// host-local handing out the node's podCIDRs (one range set per family),
// masquerade left to the agent, the agent's policy socket if any, and
// portmap chained for hostPort.
func conflist(s conflistSpec) ([]byte, error) {
	if len(s.PodCIDRs) == 0 {
		return nil, errors.New("no podCIDRs")
	}
	var ranges []any
	var routes []any
	for _, p := range s.PodCIDRs {
		ranges = append(ranges, []any{map[string]string{"subnet": p.Masked().String()}})
		dst := "0.0.0.0/0"
		if p.Addr().Is6() {
			dst = "::/0"
		}
		routes = append(routes, map[string]string{"dst": dst})
	}
	ipam := map[string]any{"type": s.IPAM, "ranges": ranges, "routes": routes}
	if s.DataDir != "" {
		ipam["dataDir"] = s.DataDir
	}
	bridge := map[string]any{
		"type":        "podnet-bridge",
		"bridge":      s.Bridge,
		"isGateway":   true,
		"ipMasq":      false, // the agent masquerades, with the cluster CIDR exempt
		"hairpinMode": true,  // a pod reaches itself through its Service
		"ipam":        ipam,
	}
	if s.PolicySocket != "" {
		bridge["policySocket"] = s.PolicySocket
	}
	doc := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "podnet",
		"plugins": []any{
			bridge,
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				"snat":         true,
			},
		},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// writeIfChanged makes path hold data, atomically: a temporary file in the
// same directory, synced, then renamed over path, so a runtime reading the
// directory sees the old file or the new one, never half of one. It does
// nothing when path already holds data, and reports whether it wrote.
func writeIfChanged(path string, data []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	// A name runtimes ignore (they read *.conf, *.conflist, *.json).
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, nil
}
