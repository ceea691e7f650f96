package nft

// Writing: what the service proxy's tables and the nftables masquerade of
// package nat share on top of github.com/google/nftables — a socket with
// room for large batches, element lists cut to fit a netlink attribute,
// and the expressions both use.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

// Open returns a lasting nf_tables socket in ns whose buffers hold a
// batch of hundreds of thousands of elements and its acknowledgements.
func Open(ns *netns.NS) (*nftables.Conn, error) {
	bufs := nftables.SockOption(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 256<<20),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20))
		})
		return errors.Join(err, serr)
	})
	c, err := nftables.New(nftables.WithNetNSFd(ns.DialFd()), nftables.AsLasting(), nftables.WithSockOptions(bufs))
	if err != nil {
		return nil, fmt.Errorf("nftables socket in netns %q: %w", ns, err)
	}
	return c, nil
}

// Table returns the nf_tables table name in the ip (IPv4) or ip6 family.
func Table(f podnet.Family, name string) *nftables.Table {
	if f == podnet.IPv6 {
		return &nftables.Table{Name: name, Family: nftables.TableFamilyIPv6}
	}
	return &nftables.Table{Name: name, Family: nftables.TableFamilyIPv4}
}

// chunkBytes bounds the elements of one netlink message: a message's
// element list is one attribute, whose length field has 16 bits, so a
// longer list would be cut short by the kernel without an error.
const chunkBytes = 48 << 10

// elemSize is an upper bound of the bytes e takes in a message.
func elemSize(e nftables.SetElement) int {
	n := 64 + len(e.Key) + len(e.Val)
	if e.VerdictData != nil {
		n += 32 + len(e.VerdictData.Chain)
	}
	return n
}

// Chunked calls op (Conn.SetAddElements or SetDeleteElements) on es in
// pieces small enough for one netlink message each.
func Chunked(s *nftables.Set, es []nftables.SetElement, op func(*nftables.Set, []nftables.SetElement) error) error {
	for len(es) > 0 {
		n, size := 0, 0
		for n < len(es) && size < chunkBytes {
			size += elemSize(es[n])
			n++
		}
		if err := op(s, es[:n]); err != nil {
			return err
		}
		es = es[n:]
	}
	return nil
}

// NE32 is v as a 32-bit value in host byte order, as marks, fib results
// and conntrack states are.
func NE32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// AddrLen is the address length of family f in bytes.
func AddrLen(f podnet.Family) uint32 {
	if f == podnet.IPv6 {
		return 16
	}
	return 4
}

// SAddr loads the source address of an IPv4 or IPv6 packet into reg.
func SAddr(f podnet.Family, reg uint32) expr.Any {
	off := uint32(12)
	if f == podnet.IPv6 {
		off = 8
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: AddrLen(f)}
}

// DAddr loads the destination address into reg.
func DAddr(f podnet.Family, reg uint32) expr.Any {
	off := uint32(16)
	if f == podnet.IPv6 {
		off = 24
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: AddrLen(f)}
}

// InPrefix matches when the address load puts into register 1 is inside
// p (outside it with not).
//
// Equivalent to: ip saddr P, ip daddr != P …
func InPrefix(load func(podnet.Family, uint32) expr.Any, p netip.Prefix, not bool) []expr.Any {
	f := podnet.IPv4
	if p.Addr().Is6() && !p.Addr().Is4In6() {
		f = podnet.IPv6
	}
	n := AddrLen(f)
	mask := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	op := expr.CmpOpEq
	if not {
		op = expr.CmpOpNeq
	}
	return []expr.Any{load(f, 1),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()}}
}

// Verdict is a verdict statement: accept, drop, return, or jump/goto chain.
func Verdict(kind expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

// Comment returns a rule's user data holding comment, as nft writes
// `comment "…"`.
func Comment(comment string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, comment)
}

// CommentOf returns the comment in a rule's user data, "" if none.
func CommentOf(ud []byte) string {
	c, _ := userdata.GetString(ud, userdata.TypeComment)
	return c
}
