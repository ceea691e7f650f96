package link

import (
	"errors"
	"strings"
	"testing"

	"github.com/podnet/podnet"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"eth0", "cnio0", "veth71f7d238", strings.Repeat("x", 15), "a-b_c.d"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", strings.Repeat("x", 16), "a/b", "a:b", "a b", "tab\t", "nl\n", "del\x7f"} {
		if err := ValidateName(bad); !errors.Is(err, podnet.ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
