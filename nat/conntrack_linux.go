package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

// Tuple is one direction of a tracked connection.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for protocols without ports
}

// Flow is a conntrack entry: the original direction, the reply direction
// as the kernel expects it (showing any NAT), and its state.
type Flow struct {
	Protocol  uint8 // IP protocol number (6 tcp, 17 udp, 132 sctp, 1 icmp, 58 ipv6-icmp)
	Orig      Tuple
	Reply     Tuple
	Timeout   uint32 // seconds left
	TCPState  string // "ESTABLISHED", "TIME_WAIT" … for TCP, else ""
	Assured   bool
	SeenReply bool
	Mark      uint32
	Zone      uint16
	Use       uint32

	raw conntrack.Flow
}

var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 33: "dccp", 47: "gre"}

// ProtocolName returns the name conntrack -L prints for the flow's
// protocol ("tcp", "udp" …, "unknown" otherwise).
func (f Flow) ProtocolName() string {
	if n, ok := protoNames[f.Protocol]; ok {
		return n
	}
	return "unknown"
}

func fromConntrack(c conntrack.Flow) Flow {
	f := Flow{
		Protocol:  c.TupleOrig.Proto.Protocol,
		Orig:      tupleOf(c.TupleOrig),
		Reply:     tupleOf(c.TupleReply),
		Timeout:   c.Timeout,
		Assured:   c.Status.Assured(),
		SeenReply: c.Status.SeenReply(),
		Mark:      c.Mark,
		Zone:      c.Zone,
		Use:       c.Use,
		raw:       c,
	}
	if c.ProtoInfo.TCP != nil && int(c.ProtoInfo.TCP.State) < len(tcpStates) {
		f.TCPState = tcpStates[c.ProtoInfo.TCP.State]
	}
	return f
}

func tupleOf(t conntrack.Tuple) Tuple {
	return Tuple{Src: t.IP.SourceAddress.Unmap(), Dst: t.IP.DestinationAddress.Unmap(), SrcPort: t.Proto.SourcePort, DstPort: t.Proto.DestinationPort}
}

// String prints the flow the way conntrack -L does, e.g.
//
//	tcp      6 86397 ESTABLISHED src=10.200.0.2 dst=10.240.0.20 sport=40112 dport=80 src=10.240.0.20 dst=10.240.0.10 sport=80 dport=40112 [ASSURED] mark=0 use=1
func (f Flow) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %d %d ", f.ProtocolName(), f.Protocol, f.Timeout)
	if f.TCPState != "" {
		b.WriteString(f.TCPState + " ")
	}
	ports := f.Protocol == 6 || f.Protocol == 17 || f.Protocol == 132 || f.Protocol == 136 || f.Protocol == 33
	tuple := func(t Tuple) {
		fmt.Fprintf(&b, "src=%s dst=%s ", t.Src, t.Dst)
		if ports {
			fmt.Fprintf(&b, "sport=%d dport=%d ", t.SrcPort, t.DstPort)
		}
	}
	tuple(f.Orig)
	if !f.SeenReply {
		b.WriteString("[UNREPLIED] ")
	}
	tuple(f.Reply)
	if f.Assured {
		b.WriteString("[ASSURED] ")
	}
	fmt.Fprintf(&b, "mark=%d ", f.Mark)
	if f.Zone != 0 {
		fmt.Fprintf(&b, "zone=%d ", f.Zone)
	}
	b.WriteString("use=" + strconv.FormatUint(uint64(f.Use), 10))
	return b.String()
}

// FlowFilter selects flows; zero fields match anything.
type FlowFilter struct {
	Family   Family   // IPv4 or IPv6; 0 both
	Protocol Protocol // "tcp", "udp", "sctp", "icmp", "ipv6-icmp"
	OrigSrc  netip.Addr
	OrigDst  netip.Addr
	ReplySrc netip.Addr // after DNAT: the backend that answers
	ReplyDst netip.Addr // after SNAT: the address replies go to
	DstPort  uint16     // original destination port
	// ReplySrcPort is the reply source port: the backend port after DNAT.
	ReplySrcPort uint16
}

var protoNums = map[Protocol]uint8{TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ICMPv6: 58, "icmpv6": 58}

// Match reports whether f selects fl.
func (f FlowFilter) Match(fl Flow) bool {
	addr := func(want, have netip.Addr) bool { return !want.IsValid() || want.Unmap() == have }
	switch {
	case f.Family != 0 && FamilyOf(fl.Orig.Src) != f.Family:
		return false
	case f.Protocol != "" && protoNums[f.Protocol] != fl.Protocol:
		return false
	case f.DstPort != 0 && fl.Orig.DstPort != f.DstPort:
		return false
	case f.ReplySrcPort != 0 && fl.Reply.SrcPort != f.ReplySrcPort:
		return false
	}
	return addr(f.OrigSrc, fl.Orig.Src) && addr(f.OrigDst, fl.Orig.Dst) && addr(f.ReplySrc, fl.Reply.Src) && addr(f.ReplyDst, fl.Reply.Dst)
}

func (f FlowFilter) validate() error {
	if f.Protocol != "" {
		if _, ok := protoNums[f.Protocol]; !ok {
			return podnet.Invalid("flow filter: protocol %q", f.Protocol)
		}
	}
	if f.Family != 0 && !f.Family.valid() {
		return podnet.Invalid("flow filter: family %v", f.Family)
	}
	return nil
}

func dialConntrack(ns *netns.NS) (*conntrack.Conn, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		return nil, &podnet.OpError{Op: "open", Kind: "conntrack socket", NetNS: ns.String(), Err: err}
	}
	return c, nil
}

// ListFlows returns the conntrack entries of ns that filter selects, over
// a netlink socket opened in ns.
//
// Equivalent to: conntrack -L [-p PROTO] [-s ADDR] [-d ADDR] [-r ADDR] [-q ADDR] [--dport PORT]
func ListFlows(ctx context.Context, ns *netns.NS, filter FlowFilter) ([]Flow, error) {
	if err := filter.validate(); err != nil {
		return nil, err
	}
	c, err := dialConntrack(ns)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	raw, err := c.Dump(nil)
	if err != nil {
		return nil, &podnet.OpError{Op: "list", Kind: "conntrack flows", NetNS: ns.String(), Err: err}
	}
	var out []Flow
	for _, r := range raw {
		if fl := fromConntrack(r); filter.Match(fl) {
			out = append(out, fl)
		}
	}
	return out, nil
}

// DeleteFlows deletes the conntrack entries of ns that filter selects and
// returns how many it deleted; flows that vanish meanwhile are not errors.
// The next packet of a deleted flow is treated as new and goes through the
// NAT rules as they are now.
//
// Equivalent to: conntrack -D [-p PROTO] [-s ADDR] [-d ADDR] [-r ADDR] [-q ADDR] [--dport PORT]
func DeleteFlows(ctx context.Context, ns *netns.NS, filter FlowFilter) (int, error) {
	flows, err := ListFlows(ctx, ns, filter)
	if err != nil {
		return 0, err
	}
	c, err := dialConntrack(ns)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	n := 0
	for _, f := range flows {
		if err := c.Delete(f.raw); err != nil {
			if errors.Is(err, syscall.ENOENT) {
				continue
			}
			return n, &podnet.OpError{Op: "delete", Kind: "conntrack flow", Name: f.String(), NetNS: ns.String(), Err: err}
		}
		n++
	}
	return n, nil
}

// FlushFlows deletes every conntrack entry of ns.
//
// Equivalent to: conntrack -F
func FlushFlows(_ context.Context, ns *netns.NS) error {
	c, err := dialConntrack(ns)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Flush(); err != nil {
		return &podnet.OpError{Op: "flush", Kind: "conntrack table", NetNS: ns.String(), Err: err}
	}
	return nil
}
