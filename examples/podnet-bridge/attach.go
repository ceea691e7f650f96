package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/ipam"
)

// validateAttachment refuses container IDs and interface names that are
// unsafe to record on disk (too long, path separators, "..", control
// characters), with code 7, before anything is created. The CNI library
// has already refused some of them with code 4.
func validateAttachment(containerID, ifName string) error {
	if err := (ipam.Owner{ContainerID: containerID, IfName: ifName}).Validate(); err != nil {
		return configError(types.ErrInvalidNetworkConfig, "%v", err)
	}
	return nil
}

// loadAttachment parses the configuration and checks the attachment's
// container ID and interface name: what ADD, DEL and CHECK all start with.
func loadAttachment(args *skel.CmdArgs) (*netConf, error) {
	n, err := loadConf(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	if err := validateAttachment(args.ContainerID, args.IfName); err != nil {
		return nil, err
	}
	return n, nil
}
