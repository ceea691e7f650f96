// Package route programs routes and forwarding in a network namespace.
//
// # Verbs
//
// Create fails with ErrExist when a route with the same key (destination,
// table, metric) exists; Replace overwrites it; Ensure writes only when the
// kernel's route differs; Delete succeeds when the route is already gone.
// Each names its `ip route` equivalent.
//
// # Owned routes
//
// A program that owns a set of routes — a node agent that routes every
// other node's pod CIDR to that node, `10.200.1.0/24 via 10.240.0.21` —
// tags them with its routing protocol number and calls Sync with the full
// desired set. Sync adds, replaces and deletes only routes with that
// protocol; routes of the kernel, of DHCP or of the administrator are never
// touched.
//
// # Forwarding
//
// SetForwarding writes net.ipv4.ip_forward or net.ipv6.conf.all.forwarding
// of the given namespace only.
package route
