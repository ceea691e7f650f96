package service

import (
	"slices"
	"testing"
)

// TestTopology: which endpoints take Cluster-policy connections on node0
// in zone-a, by kube-proxy's rules for hints (v1.34, PreferSameNode on):
// node hints when every ready endpoint has one and one names this node,
// else zone hints when every ready endpoint has one and one names this
// zone, else all; terminating endpoints, the fallback when none is ready,
// ignore hints.
func TestTopology(t *testing.T) {
	zoned := func(a string, ready bool, zones, nodes []string) Endpoint {
		return Endpoint{Addr: ip(a), Ready: ready, Serving: true, Terminating: !ready, ZoneHints: zones, NodeHints: nodes}
	}
	a, b := []string{"zone-a"}, []string{"zone-b"}
	for _, tc := range []struct {
		name string
		zone string
		eps  []Endpoint
		want []string
	}{
		{"zone hints for this zone", "zone-a", []Endpoint{zoned("10.0.0.1", true, a, nil), zoned("10.0.0.2", true, b, nil)}, []string{"10.0.0.1"}},
		{"one ready endpoint without a hint", "zone-a", []Endpoint{zoned("10.0.0.1", true, a, nil), zoned("10.0.0.2", true, nil, nil)}, []string{"10.0.0.1", "10.0.0.2"}},
		{"no endpoint for this zone", "zone-c", []Endpoint{zoned("10.0.0.1", true, a, nil), zoned("10.0.0.2", true, b, nil)}, []string{"10.0.0.1", "10.0.0.2"}},
		{"node without a zone", "", []Endpoint{zoned("10.0.0.1", true, a, nil), zoned("10.0.0.2", true, b, nil)}, []string{"10.0.0.1", "10.0.0.2"}},
		{"unready endpoint without a hint is ignored", "zone-a", []Endpoint{zoned("10.0.0.1", true, a, nil), zoned("10.0.0.2", true, b, nil), zoned("10.0.0.3", false, nil, nil)}, []string{"10.0.0.1"}},
		{"node hints first", "zone-a", []Endpoint{zoned("10.0.0.1", true, a, []string{"node1"}), zoned("10.0.0.2", true, b, []string{"node0"})}, []string{"10.0.0.2"}},
		{"node hints for other nodes: zone", "zone-a", []Endpoint{zoned("10.0.0.1", true, a, []string{"node1"}), zoned("10.0.0.2", true, b, []string{"node2"})}, []string{"10.0.0.1"}},
		{"terminating fallback ignores hints", "zone-a", []Endpoint{zoned("10.0.0.1", false, b, nil), zoned("10.0.0.2", false, b, nil)}, []string{"10.0.0.1", "10.0.0.2"}},
	} {
		r := renderer{node: "node0", zone: tc.zone}
		var got []string
		for _, e := range r.clusterEndpoints(tc.eps) {
			got = append(got, e.Addr.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
