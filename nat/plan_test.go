package nat

import (
	"fmt"
	"strings"
	"testing"
)

// TestPlanDedup: a chain declared, flushed or deleted several times in one
// transaction gets one ':' line and at most one '-X' line.
func TestPlanDedup(t *testing.T) {
	a := Chain{IPv4, TableNAT, "PODNET-A"}
	b := Chain{IPv4, TableNAT, "PODNET-B"}
	tx := NewTransaction().
		Flush(a).Declare(a, Rule{Target: Return}).Flush(a).
		DeleteChain(b).DeleteChain(b).Flush(b)
	text, err := tx.Text(IPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := "*nat\n:PODNET-A - [0:0]\n:PODNET-B - [0:0]\n-A PODNET-A -j RETURN\n-X PODNET-B\nCOMMIT\n"
	if text != want {
		t.Errorf("got\n%s\nwant\n%s", text, want)
	}
}

// BenchmarkPlanChains plans a transaction declaring 60k chains, the size of
// a 10k-Service proxy table: planning must stay linear in the chain count.
func BenchmarkPlanChains(b *testing.B) {
	tx := NewTransaction()
	for i := range 60000 {
		tx.Declare(Chain{IPv4, TableNAT, fmt.Sprintf("PODNET-SEP-%016d", i)}, Rule{Target: Return})
	}
	for b.Loop() {
		text, err := tx.Text(IPv4)
		if err != nil || strings.Count(text, "\n:") != 60000 {
			b.Fatal(err)
		}
	}
}
