// Package ipam allocates pod addresses the way the reference host-local
// IPAM plugin does, with the same files on disk, so a node can switch
// between host-local and podnet in either direction without an address
// conflict. It is pure Go: it never touches netlink.
//
// # Ranges
//
// A Range is a block of a subnet (subnet, rangeStart, rangeEnd, gateway);
// a RangeSet is a list of ranges of one family from which an attachment gets
// one address. Dual stack is one IPv4 set and one IPv6 set. Canonical fills in
// host-local's defaults and rejects what host-local rejects, with a
// *FieldError naming the field. ParseConfig reads a whole CNI network
// configuration as host-local does.
//
// # Allocating
//
// An Allocator takes one address per set for an Owner (container ID and
// interface), round-robin after the last address reserved in the set.
// Allocate is idempotent and all-or-nothing; Release, Lookup and GC complete
// the lifecycle. Errors match ErrInvalid, ErrConflict, ErrExhausted or
// ErrNotFound with errors.Is.
//
// # Stores
//
// Leases live in a Store. MemoryStore is for tests. DiskStore writes
// host-local's layout, <dataDir>/<network>/<ip> holding
// "<containerID>\r\n<ifname>", last_reserved_ip.<set> and a lock file taken
// with flock(2), crash-safely (stage, then link), and keeps an index so that
// a call costs the same with 10 leases or 10,000.
//
// # Node subnets
//
// NodeSubnets carves a cluster CIDR into per-node subnets (10.200.0.0/16
// into 10.200.N.0/24) and keeps each node's subnet in a Store until the node
// is released.
//
// # The plugin
//
// examples/podnet-host-local builds podnet-host-local, a CNI IPAM plugin with
// host-local's configuration keys, on top of this package.
package ipam
