// Package bridge manages Linux bridges and their ports: the cnio0 switch
// that joins the pods of a node and carries their gateway address.
//
// # Network namespaces
//
// Every function acts in the namespace of the handle it is given, through
// a netlink socket opened there; nothing changes the caller's thread.
//
// # Converging
//
// Ensure creates a bridge or converges an existing one (MTU, up,
// promiscuous mode) and refuses, with ErrConflict, to touch a link of
// another type that holds the name. EnsureAddr adds the gateway address
// and only replaces a different address in the same subnet when asked,
// like the reference bridge plugin's forceAddress.
//
// # Ports
//
// Attach and Detach enslave a link (the host end of a pod's veth) and set
// hairpin mode, which lets a pod reach itself through a Service address.
// Ports lists what `brctl show` and `bridge link` show.
package bridge
