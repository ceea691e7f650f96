package ifname

import (
	"errors"
	"strings"
	"testing"

	"github.com/podnet/podnet"
)

func TestValidate(t *testing.T) {
	for _, ok := range []string{"eth0", "cnio0", "veth71f7d238", strings.Repeat("x", 15), "a-b_c.d"} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", strings.Repeat("x", 16), "a/b", "a:b", "a b", "tab\t", "nl\n", "del\x7f"} {
		if err := Validate(bad); !errors.Is(err, podnet.ErrInvalid) {
			t.Errorf("Validate(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
