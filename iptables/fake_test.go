package iptables

import (
	"context"
	"testing"
)

// TestFakeAtomic: a failing transaction leaves the Fake unchanged; foreign
// chains survive; Prune and references work as in the kernel.
func TestFakeAtomic(t *testing.T) {
	ctx := context.Background()
	fk := NewFake()
	if err := fk.Load(IPv4, "*nat\n:POSTROUTING ACCEPT [0:0]\n:FOREIGN - [0:0]\n-A POSTROUTING -j FOREIGN\n-A FOREIGN -m foo --bar -j ACCEPT\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	a := Chain{IPv4, TableNAT, "PODNET-A"}
	post := Chain{IPv4, TableNAT, "POSTROUTING"}
	if err := fk.Run(ctx, NewTransaction().Declare(a, Rule{Target: Return}).EnsureRule(post, true, Rule{Target: Jump(a.Name)})); err != nil {
		t.Fatal(err)
	}
	before := fk.Dump(IPv4)
	for name, tx := range map[string]*Transaction{
		"jump to missing chain": NewTransaction().Declare(Chain{IPv4, TableNAT, "PODNET-B"}, Rule{Target: Jump("PODNET-NOWHERE")}),
		"delete missing rule":   NewTransaction().Declare(Chain{IPv4, TableNAT, "PODNET-B"}).Delete(post, Rule{Target: Drop}),
		"delete referenced":     NewTransaction().DeleteChain(a),
	} {
		if err := fk.Run(ctx, tx); err == nil {
			t.Errorf("%s: succeeded", name)
		}
		if got := fk.Dump(IPv4); got != before {
			t.Errorf("%s: changed the tables:\n%s", name, got)
		}
	}
	if err := fk.Run(ctx, NewTransaction().Prune(IPv4, TableNAT, PrefixOwner("PODNET"))); err != nil {
		t.Fatal(err)
	}
	want := "*nat\n:POSTROUTING ACCEPT\n:FOREIGN -\n-A POSTROUTING -j FOREIGN\n-A FOREIGN -m foo --bar -j ACCEPT\nCOMMIT\n"
	if got := fk.Dump(IPv4); got != want {
		t.Errorf("after prune:\n%s\nwant\n%s", got, want)
	}
	if ok, err := fk.Check(Chain{IPv4, TableNAT, "PODNET-GONE"}, Rule{}); ok || err != nil {
		t.Errorf("Check in missing chain = %v, %v; want false, nil", ok, err)
	}
}
