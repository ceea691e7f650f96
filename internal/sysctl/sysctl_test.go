package sysctl_test

import (
	"errors"
	"testing"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestPerNamespace(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	const key = "net.ipv4.conf.all.arp_ignore"
	if err := sysctl.Set(a, key, "2"); err != nil {
		t.Fatal(err)
	}
	if v, err := sysctl.Get(a, key); err != nil || v != "2" {
		t.Fatalf("a: %q, %v", v, err)
	}
	if v, err := sysctl.Get(b, key); err != nil || v != "0" {
		t.Fatalf("the write leaked into another namespace: %q, %v", v, err)
	}
	for _, bad := range []string{"kernel.hostname", "net/../../etc", "net..ipv4", ""} {
		if err := sysctl.Set(a, bad, "1"); !errors.Is(err, podnet.ErrInvalid) {
			t.Errorf("Set(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
