// Package netns opens, creates, names and enters Linux network namespaces.
//
// A *NS is an open namespace: it keeps the namespace alive while open and
// is the handle every other podnet package takes to say where it acts.
//
// # Anonymous and named namespaces
//
// New makes an anonymous namespace that lives as long as its handle.
// NewNamed makes one bind-mounted at /var/run/netns/NAME, exactly like
// `ip netns add NAME`, so `ip netns exec NAME ...` and CNI runtimes can use
// it; DeleteNamed removes it. List, Identify and NS.Inode report what
// `ip netns list`, `ip netns identify PID` and `lsns -t net` show.
//
// # Go, threads and namespaces
//
// A network namespace belongs to a thread, not to a process, and Go moves
// goroutines between threads freely. NS.Do therefore runs its function on
// a fresh goroutine locked to its thread, switches that thread into the
// namespace, and switches it back afterwards. If switching back fails the
// thread is never unlocked, so Go destroys it rather than run other code in
// the wrong namespace. The caller's own thread never changes namespace.
//
// Most podnet code does not need Do at all: netlink sockets are opened
// inside a namespace once and used from anywhere. Do is for what has no
// such socket: /proc/sys/net writes and running programs like
// iptables-restore inside the namespace.
package netns
