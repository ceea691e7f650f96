package nl_test

import (
	"testing"

	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestHandleSeesItsNamespace(t *testing.T) {
	p := nstest.NewPair(t)
	h, err := nl.Handle(p.A)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName("eth0"); err != nil {
		t.Fatalf("eth0 not visible through a handle bound to its namespace: %v", err)
	}
	if _, err := h.LinkByName("nosuch"); !nl.IsNotFound(err) {
		t.Fatalf("missing link: %v, want not found", err)
	}
}

func BenchmarkHandle(b *testing.B) {
	ns := nstest.New(b)
	for b.Loop() {
		h, err := nl.Handle(ns)
		if err != nil {
			b.Fatal(err)
		}
		h.LinkByName("lo")
		h.Close()
	}
}
