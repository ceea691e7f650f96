// Package probe sends test traffic from inside a namespace: ICMP echo, and
// TCP/UDP exchanges with small servers that report the source address they
// saw. It exists so demos and tests prove reachability with real packets
// without depending on ping or netcat being installed; podnet's own tests
// and the podnet-cluster demo use it, and so can yours.
package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/netns"
)

// Ping sends one ICMP echo request from inside ns to dst and waits up to
// timeout for the matching reply; it returns the round-trip time. IPv4 only.
//
// Equivalent to: ip netns exec NS ping -c 1 -W TIMEOUT DST
func Ping(ns *netns.NS, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	if !dst.Is4() {
		return 0, fmt.Errorf("ping %s: only IPv4 is supported", dst)
	}
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ping %s from netns %q: socket: %w", dst, ns, err)
	}
	defer unix.Close(fd)

	id := uint16(os.Getpid())
	seq := uint16(time.Now().UnixNano())
	req := make([]byte, 16)
	req[0] = 8 // echo request
	binary.BigEndian.PutUint16(req[4:], id)
	binary.BigEndian.PutUint16(req[6:], seq)
	copy(req[8:], "podnet!!")
	binary.BigEndian.PutUint16(req[2:], checksum(req))

	to := &unix.SockaddrInet4{Addr: dst.As4()}
	start := time.Now()
	if err := unix.Sendto(fd, req, 0, to); err != nil {
		return 0, fmt.Errorf("ping %s from netns %q: send: %w", dst, ns, err)
	}
	deadline := start.Add(timeout)
	buf := make([]byte, 1500)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return 0, fmt.Errorf("ping %s from netns %q: no reply within %v", dst, ns, timeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("ping %s from netns %q: receive: %w", dst, ns, err)
		}
		sa, ok := from.(*unix.SockaddrInet4)
		if !ok || netip.AddrFrom4(sa.Addr) != dst || n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		icmp := buf[ihl:n]
		if len(icmp) >= 8 && icmp[0] == 0 &&
			binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == seq {
			return time.Since(start), nil
		}
	}
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
