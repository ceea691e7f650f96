package service

import (
	"testing"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// mustBackend returns the Backend of mode m in ns.
func mustBackend(m Mode, ns *netns.NS) Backend {
	b, err := NewBackend(m, ns)
	if err != nil {
		panic(err)
	}
	return b
}
