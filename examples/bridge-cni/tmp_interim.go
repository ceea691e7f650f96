package main

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/netns"
)

type inProcess struct{ delegate }

var _ = context.Background

func ensureMasquerade(host *netns.NS, n *netConf, ips []*current.IPConfig) error {
	return errors.New("ipMasq: not implemented yet")
}
func checkMasquerade(host *netns.NS, n *netConf, ips []*current.IPConfig) error {
	return errors.New("ipMasq: not implemented yet")
}
func removeLegacyMasquerade(host *netns.NS, n *netConf, containerID string) error { return nil }
func gcLegacyMasquerade(n *netConf) error                                         { return nil }

var _ = skel.CmdArgs{}
