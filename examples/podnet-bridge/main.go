// Command podnet-bridge is a CNI plugin that takes the reference bridge
// plugin's configuration unchanged and does its job with the podnet SDK:
// it ensures a bridge in the namespace it runs in, gives the pod a veth
// whose peer is born in the pod's namespace, allocates addresses, and
// masquerades the pod network with one rule set per network — constant
// cost per pod.
//
// Build it as
//
//	go build -o /opt/cni/bin/podnet-bridge ./examples/podnet-bridge
//
// and change only "type": "bridge" to "type": "podnet-bridge" in a
// configuration such as
//
//	{"cniVersion":"1.0.0","name":"bridge","type":"podnet-bridge","bridge":"cnio0",
//	 "isGateway":true,"ipMasq":true,
//	 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.200.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}
//
// With "ipam": {"type": "host-local"} the allocation runs in-process on the
// same dataDir files as the reference host-local plugin; any other IPAM
// type is delegated to its binary, as the reference does.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	if tomb := os.Getenv(reapEnv); tomb != "" {
		os.Exit(reap(tomb))
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		GC:     cmdGC,
		Status: cmdStatus,
	}, version.All, "podnet-bridge: bridge CNI plugin built on the podnet SDK")
}
