package main

import (
	"github.com/containernetworking/cni/pkg/types"
)

// maxContainerIDLen bounds container IDs before they reach the disk store
// (runtimes use 64 hex digits).
const maxContainerIDLen = 256

// validateAttachment refuses container IDs and interface names that are
// unsafe to record on disk, with code 7, before anything is created. The
// CNI library has already refused characters outside [A-Za-z0-9_.-] in the
// container ID and malformed interface names (code 4).
func validateAttachment(containerID, ifName string) error {
	if len(containerID) > maxContainerIDLen {
		return configError(types.ErrInvalidNetworkConfig, "container ID is longer than %d bytes", maxContainerIDLen)
	}
	if containerID == "." || containerID == ".." {
		return configError(types.ErrInvalidNetworkConfig, "container ID %q", containerID)
	}
	return nil
}
