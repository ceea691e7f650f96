// Package link changes the state of any network interface in a namespace,
// whatever its type: up and down. Type-specific work lives in the packages
// veth and bridge.
//
// Every function takes the namespace it acts in and uses a netlink socket
// opened there.
package link
