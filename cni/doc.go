// Package cni connects CNI results (containernetworking/cni's types/100)
// to podnet's kernel packages: it applies a result to a pod's interface
// and checks it is still there, and converts between the result's net
// types and net/netip.
//
// It is what a CNI plugin does between "IPAM returned addresses" and
// "print the result": the reference plugins keep it in their pkg/ipam
// (ConfigureIface).
//
//	r, _ := current.NewResultFromResult(ipamResult)
//	if err := cni.ConfigureIface(pod, "eth0", r); err != nil { ... }
//
// # Network namespaces
//
// Every function takes the pod's namespace; nothing moves the caller's
// thread.
package cni
