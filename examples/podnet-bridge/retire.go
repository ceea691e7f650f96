package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/veth"
)

// Deleting a veth pair costs the kernel an RCU grace period — 17–23 ms on
// a 2-core VM, more than the rest of DEL together. DEL therefore retires
// the pair at once and leaves the deletion itself to a detached child:
//
//  1. both ends are set down and renamed to a tombstone name ("pnd" + 8
//     hex digits), so the pod's interface name is free again and nothing
//     passes through the pair;
//  2. a copy of this program, holding the pod's namespace open, deletes the
//     pair and exits; DEL returns without waiting for it.
//
// Should that child die first, the tombstones are still recognisable: GC
// deletes every veth named so in the node.
const tombstonePrefix = "pnd"

// reapEnv names the tombstone the child deletes in the namespace it
// inherits as file descriptor 3.
const reapEnv = "PODNET_BRIDGE_REAP"

// retire takes the veth whose pod end is ifName in pod out of service and
// schedules its deletion. A missing interface is not an error.
func retire(pod, host *netns.NS, ifName string) error {
	end, err := veth.Get(pod, ifName)
	if errors.Is(err, veth.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	tomb := tombstone()
	hostEnd, hostErr := veth.Peer(pod, ifName, host)
	if err := downAndRename(pod, end.Name, tomb); err != nil {
		return veth.Delete(pod, ifName) // fall back to deleting it now
	}
	if hostErr == nil {
		downAndRename(host, hostEnd.Name, tomb)
	}
	if err := spawnReaper(pod, tomb); err != nil {
		return veth.Delete(pod, tomb)
	}
	return nil
}

func tombstone() string {
	b := make([]byte, 4)
	rand.Read(b)
	return tombstonePrefix + hex.EncodeToString(b)
}

// downAndRename sets the link down and renames it.
//
// Equivalent to: ip link set NAME down; ip link set NAME name NEW
func downAndRename(ns *netns.NS, name, newName string) error {
	if err := link.SetDown(ns, name); err != nil {
		return err
	}
	return link.Rename(ns, name, newName)
}

// spawnReaper starts a detached copy of this program that deletes the
// tombstone in pod. It inherits nothing but the namespace: not the
// runtime's stdout, which the runtime reads until every writer is gone.
func spawnReaper(pod *netns.NS, tomb string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fd, err := syscall.Dup(pod.Fd())
	if err != nil {
		return err
	}
	nsFile := os.NewFile(uintptr(fd), "pod-netns")
	defer nsFile.Close()
	cmd := exec.Command(self)
	cmd.Env = []string{reapEnv + "=" + tomb}
	cmd.ExtraFiles = []*os.File{nsFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// reap is the child's whole job: delete the tombstone in the namespace on
// file descriptor 3.
func reap(tomb string) int {
	if !strings.HasPrefix(tomb, tombstonePrefix) {
		return 2
	}
	ns, err := netns.Open("/proc/self/fd/3")
	if err != nil {
		fmt.Fprintln(os.Stderr, "podnet-bridge reaper:", err)
		return 1
	}
	defer ns.Close()
	if err := veth.Delete(ns, tomb); err != nil {
		fmt.Fprintln(os.Stderr, "podnet-bridge reaper:", err)
		return 1
	}
	return 0
}

// reapTombstones deletes every retired veth left in the node, for GC.
func reapTombstones(host *netns.NS) error {
	links, err := link.List(host)
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Type == "veth" && strings.HasPrefix(l.Name, tombstonePrefix) {
			if err := veth.Delete(host, l.Name); err != nil {
				return err
			}
		}
	}
	return nil
}
