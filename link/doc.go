// Package link lists the network interfaces of a namespace and brings any
// of them up or down, whatever its type (what `ip -d link show` and
// `ip link set up/down` do). Type-specific work lives in the packages veth
// and bridge.
//
// Every function takes the namespace it acts in and uses a netlink socket
// opened there.
package link
