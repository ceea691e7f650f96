package policy

import (
	"slices"
	"testing"
)

// TestPortRanges: a rule's numeric ports become disjoint intervals per
// protocol; overlapping, touching and same-start ranges merge, other
// protocols stay apart.
func TestPortRanges(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports []Port
		want  []portRange
	}{
		{"one port", []Port{{Port: 80}}, []portRange{{TCP, 80, 80}}},
		{"every port swallows a range", []Port{{Port: 1, EndPort: 81}, {}}, []portRange{{TCP, 0, 65535}}},
		{"same start", []Port{{Port: 80, EndPort: 81}, {Port: 80}}, []portRange{{TCP, 80, 81}}},
		{"touching", []Port{{Port: 82, EndPort: 90}, {Port: 80, EndPort: 81}}, []portRange{{TCP, 80, 90}}},
		{"apart", []Port{{Port: 90}, {Port: 80, EndPort: 81}}, []portRange{{TCP, 80, 81}, {TCP, 90, 90}}},
		{"protocols apart", []Port{{Protocol: UDP, Port: 80}, {Port: 80}, {Protocol: TCP, Port: 81}},
			[]portRange{{TCP, 80, 81}, {UDP, 80, 80}}},
		{"top port", []Port{{Port: 65535}, {Port: 65000, EndPort: 65535}}, []portRange{{TCP, 65000, 65535}}},
	} {
		if got := portRanges(tc.ports); !slices.Equal(got, tc.want) {
			t.Errorf("%s: portRanges(%v) = %v, want %v", tc.name, tc.ports, got, tc.want)
		}
	}
}
