package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/veth"
)

// confList wraps one plugin configuration in a cniVersion 1.1.0 list, the
// form GC and STATUS are called with.
func (n *node) confList(plugin []byte) *libcni.NetworkConfigList {
	n.t.Helper()
	var p map[string]any
	json.Unmarshal(plugin, &p)
	name := p["name"]
	delete(p, "cniVersion")
	delete(p, "name")
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": []any{p}})
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		n.t.Fatal(err)
	}
	return list
}

// TestGC keeps one attachment valid and checks GC releases the other
// leases and removes the reference plugin's chain of a gone container.
func TestGC(t *testing.T) {
	n := newNode(t)
	ours := n.conf("1.1.0", map[string]any{"ipMasq": true})
	ref := n.conf("1.1.0", map[string]any{"ipMasq": true, "type": "bridge"})
	keep := nstest.New(t)
	mustAdd(t, n, ours, keep, "keep")
	mustAdd(t, n, ours, nstest.New(t), "gone1")
	if _, err := n.add(ref, runtimeConf(nstest.New(t), "gone2")); err != nil {
		t.Fatal(err)
	}
	if got := len(n.leases("bridge")); got != 3 {
		t.Fatalf("%d leases before GC", got)
	}
	if !strings.Contains(natRules(t, n.ns), "CNI-") {
		t.Fatal("no reference chain to collect")
	}
	err := n.in(func(ctx context.Context) error {
		return n.cni.GCNetworkList(ctx, n.confList(ours), &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := n.leases("bridge"); len(got) != 1 {
		t.Errorf("leases after GC: %v, want only keep's", got)
	}
	if save := natRules(t, n.ns); strings.Contains(save, "CNI-") {
		t.Errorf("reference chain of a gone container survived GC:\n%s", save)
	}
	if err := n.check(ours, runtimeConf(keep, "keep")); err != nil {
		t.Errorf("the kept pod no longer checks out: %v", err)
	}
}

// TestGCReapsTombstones: a retired pair whose deleting child died is
// deleted by the next GC; other veths are left alone.
func TestGCReapsTombstones(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.1.0", nil)
	keep := nstest.New(t)
	mustAdd(t, n, conf, keep, "keep")
	orphan := nstest.New(t)
	if _, err := veth.Create(n.ns, veth.Spec{Name: tombstonePrefix + "0badcafe", PeerName: "x", PeerNS: orphan}); err != nil {
		t.Fatal(err)
	}
	err := n.in(func(ctx context.Context) error {
		return n.cni.GCNetworkList(ctx, n.confList(conf), &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := veth.Get(n.ns, tombstonePrefix+"0badcafe"); !errors.Is(err, veth.ErrNotFound) {
		t.Errorf("tombstone survived GC: %v", err)
	}
	if _, err := veth.Peer(keep, "eth0", n.ns); err != nil {
		t.Errorf("GC took the live pod's veth: %v", err)
	}
}

// TestStatus: ready with a usable data directory, code 50 when the data
// directory cannot be used.
func TestStatus(t *testing.T) {
	n := newNode(t)
	status := func(conf []byte) error {
		return n.in(func(ctx context.Context) error { return n.cni.GetStatusNetworkList(ctx, n.confList(conf)) })
	}
	if err := status(n.conf("1.1.0", nil)); err != nil {
		t.Fatalf("STATUS on a usable store: %v", err)
	}
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	broken := n.conf("1.1.0", map[string]any{"ipam": map[string]any{
		"type": "host-local", "ranges": []any{[]any{map[string]any{"subnet": "10.200.0.0/24"}}}, "dataDir": file,
	}})
	err := status(broken)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != codeNotReady {
		t.Fatalf("STATUS on an unusable store: %v, want code %d", err, codeNotReady)
	}
}
