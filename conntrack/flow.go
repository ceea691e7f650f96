package conntrack

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	ct "github.com/ti-mo/conntrack"
)

// Protocol is an IP protocol number as conntrack records it.
type Protocol uint8

// Protocols with a name in conntrack -L output.
const (
	ICMP    Protocol = 1
	TCP     Protocol = 6
	UDP     Protocol = 17
	GRE     Protocol = 47
	DCCP    Protocol = 33
	ICMPv6  Protocol = 58
	SCTP    Protocol = 132
	UDPLite Protocol = 136
)

var protocolNames = map[Protocol]string{ICMP: "icmp", TCP: "tcp", UDP: "udp", GRE: "gre", DCCP: "dccp", ICMPv6: "icmpv6", SCTP: "sctp", UDPLite: "udplite"}

// String returns the name conntrack -L prints ("tcp", "udp" …, "unknown").
func (p Protocol) String() string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return "unknown"
}

// hasPorts reports whether the protocol's tuples carry ports.
func (p Protocol) hasPorts() bool {
	return p == TCP || p == UDP || p == SCTP || p == UDPLite || p == DCCP
}

// Tuple is one direction of a tracked connection.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for protocols without ports
}

// Flow is a conntrack entry: the original direction, the reply direction
// as the kernel expects it (showing any NAT), and its state.
type Flow struct {
	Protocol  Protocol
	Orig      Tuple
	Reply     Tuple
	Timeout   uint32 // seconds left
	TCPState  string // "ESTABLISHED", "TIME_WAIT" … for TCP, else ""
	Assured   bool
	SeenReply bool
	Mark      uint32
	Zone      uint16
	Use       uint32

	raw ct.Flow
}

var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func flowOf(c ct.Flow) Flow {
	f := Flow{
		Protocol:  Protocol(c.TupleOrig.Proto.Protocol),
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

func tupleOf(t ct.Tuple) Tuple {
	return Tuple{Src: t.IP.SourceAddress.Unmap(), Dst: t.IP.DestinationAddress.Unmap(), SrcPort: t.Proto.SourcePort, DstPort: t.Proto.DestinationPort}
}

// String prints the flow the way conntrack -L does, e.g.
//
//	tcp      6 86397 ESTABLISHED src=10.200.0.2 dst=10.240.0.20 sport=40112 dport=80 src=10.240.0.20 dst=10.240.0.10 sport=80 dport=40112 [ASSURED] mark=0 use=1
func (f Flow) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %d %d ", f.Protocol, uint8(f.Protocol), f.Timeout)
	if f.TCPState != "" {
		b.WriteString(f.TCPState + " ")
	}
	tuple := func(t Tuple) {
		fmt.Fprintf(&b, "src=%s dst=%s ", t.Src, t.Dst)
		if f.Protocol.hasPorts() {
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
