package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/podnet/podnet"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound     = podnet.ErrNotFound
	ErrInvalid      = podnet.ErrInvalid
	ErrConflict     = podnet.ErrConflict
	ErrNotSupported = podnet.ErrNotSupported
)

// Family is an IP family: it picks iptables or ip6tables.
type Family = podnet.Family

// The two families: IPv4 is iptables, iptables-restore and iptables-save;
// IPv6 is ip6tables, ip6tables-restore and ip6tables-save.
const (
	IPv4 = podnet.IPv4
	IPv6 = podnet.IPv6
)

// FamilyOf returns the family of a (IPv4 for an IPv4-mapped IPv6 address).
func FamilyOf(a netip.Addr) Family { return podnet.FamilyOf(a) }

// Table is an iptables table.
type Table string

// Tables podnet writes to. Any other table name is passed through.
const (
	TableNAT    Table = "nat"    // iptables -t nat
	TableFilter Table = "filter" // iptables -t filter
	TableMangle Table = "mangle" // iptables -t mangle
	TableRaw    Table = "raw"    // iptables -t raw
)

// Chain names a chain: the family and table it lives in and its name.
type Chain struct {
	Family Family
	Table  Table
	Name   string
}

func (c Chain) String() string {
	return fmt.Sprintf("%s %s/%s", c.Family, c.Table, c.Name)
}

// builtinChains are the chains the kernel creates with each table.
var builtinChains = map[string]bool{
	"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
}

// IsBuiltin reports whether name is one of iptables' built-in chains
// (PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING).
func IsBuiltin(name string) bool { return builtinChains[name] }

// ValidateChainName checks a user chain name: 1 to 28 bytes of printable
// non-space characters, not starting with '-' or '!', not a target name.
// iptables allows 28 bytes (XT_EXTENSION_MAXNAMELEN - 1 minus nothing).
func ValidateChainName(name string) error {
	switch {
	case name == "":
		return podnet.Invalid("chain name is empty")
	case len(name) > 28:
		return podnet.Invalid("chain name %q: longer than 28 bytes", name)
	case name[0] == '-' || name[0] == '!':
		return podnet.Invalid("chain name %q: starts with %q", name, name[0])
	case targetNames[name]:
		return podnet.Invalid("chain name %q: is a target name", name)
	}
	for _, r := range name {
		if r <= ' ' || r >= 0x7f || r == '"' || r == '\'' || r == '\\' {
			return podnet.Invalid("chain name %q: contains a space, quote or non-ASCII character", name)
		}
	}
	return nil
}

var targetNames = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "MASQUERADE": true,
	"SNAT": true, "DNAT": true, "MARK": true, "QUEUE": true, "NFQUEUE": true, "LOG": true,
}

// Protocol is a layer-4 protocol name as iptables spells it (-p).
type Protocol string

// Protocols with names iptables-save prints.
const (
	TCP    Protocol = "tcp"
	UDP    Protocol = "udp"
	SCTP   Protocol = "sctp"
	ICMP   Protocol = "icmp"
	ICMPv6 Protocol = "ipv6-icmp"
)

// HasPorts reports whether the protocol has ports to match (tcp, udp, sctp).
func (p Protocol) HasPorts() bool { return p == TCP || p == UDP || p == SCTP }

// Addr matches a source or destination prefix (-s / -d), negated when Not.
// The zero Addr matches everything.
type Addr struct {
	Prefix netip.Prefix
	Not    bool
}

// Iface matches an interface name (-i / -o); a trailing "+" matches every
// name with that prefix. Negated when Not. The zero Iface matches everything.
type Iface struct {
	Name string
	Not  bool
}

// PortRange is a port or an inclusive range of ports; Last 0 means First
// only. The zero PortRange means "any".
type PortRange struct {
	First, Last uint16
}

// Port returns the PortRange of a single port.
func Port(p uint16) PortRange { return PortRange{First: p} }

// IsZero reports whether r is the zero value (no port given).
func (r PortRange) IsZero() bool { return r.First == 0 && r.Last == 0 }

func (r PortRange) format(sep string) string {
	if r.Last == 0 || r.Last == r.First {
		return strconv.Itoa(int(r.First))
	}
	return strconv.Itoa(int(r.First)) + sep + strconv.Itoa(int(r.Last))
}

func (r PortRange) validate(what string) error {
	if r.First == 0 {
		return podnet.Invalid("%s: port 0", what)
	}
	if r.Last != 0 && r.Last < r.First {
		return podnet.Invalid("%s: range %d-%d is reversed", what, r.First, r.Last)
	}
	return nil
}

// Rule is one iptables rule: the basic matches, the match modules in the
// order they apply, and a target. A Rule is plain data; it is validated and
// rendered when added to a Transaction.
//
// The zero Rule matches every packet and has no target (an accounting rule).
type Rule struct {
	Source      Addr     // -s PREFIX, ! -s PREFIX
	Destination Addr     // -d PREFIX, ! -d PREFIX
	In          Iface    // -i NAME, ! -i NAME
	Out         Iface    // -o NAME, ! -o NAME
	Protocol    Protocol // -p PROTO
	Matches     []Match  // -m MODULE ..., rendered in order
	Target      Target   // -j TARGET ... or -g CHAIN; nil for none
}

// Match is an iptables match module. The implementations are the types of
// this package (Ports, AddrType, Mark, Comment, Statistic, Recent,
// Conntrack, PhysDev).
type Match interface {
	appendArgs(args []string, r *Rule, f Family) ([]string, error)
}

// Target is an iptables target. The implementations are the types of this
// package (Masquerade, SNAT, DNAT, SetMark, Jump, Goto, Return, Accept,
// Drop, Reject).
type Target interface {
	appendArgs(args []string, f Family) ([]string, error)
}

// Args renders r as the argument list iptables takes after "-A CHAIN", in
// the order iptables-save prints it, so that a rendered rule and the saved
// one compare equal as text.
//
// Equivalent to: iptables -A CHAIN ARGS...
func (r Rule) Args(f Family) ([]string, error) {
	if !f.Valid() {
		return nil, podnet.Invalid("rule: family %v", f)
	}
	args := make([]string, 0, 16)
	var err error
	for _, a := range []struct {
		flag string
		a    Addr
	}{{"-s", r.Source}, {"-d", r.Destination}} {
		if !a.a.Prefix.IsValid() {
			if a.a.Not {
				return nil, podnet.Invalid("rule: ! %s without a prefix", a.flag)
			}
			continue
		}
		p := a.a.Prefix
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if FamilyOf(p.Addr()) != f {
			return nil, podnet.Invalid("rule: %s %s in an %s rule", a.flag, a.a.Prefix, f)
		}
		if a.a.Not {
			args = append(args, "!")
		}
		args = append(args, a.flag, p.Masked().String())
	}
	for _, i := range []struct {
		flag string
		i    Iface
	}{{"-i", r.In}, {"-o", r.Out}} {
		if i.i.Name == "" {
			if i.i.Not {
				return nil, podnet.Invalid("rule: ! %s without a name", i.flag)
			}
			continue
		}
		if err := validateIface(i.i.Name); err != nil {
			return nil, err
		}
		if i.i.Not {
			args = append(args, "!")
		}
		args = append(args, i.flag, i.i.Name)
	}
	if r.Protocol != "" {
		if err := validateWord("protocol", string(r.Protocol)); err != nil {
			return nil, err
		}
		p := r.Protocol
		if f == IPv6 && (p == "icmpv6" || p == "icmp6") {
			p = ICMPv6
		}
		args = append(args, "-p", string(p))
	}
	for _, m := range r.Matches {
		if m == nil {
			return nil, podnet.Invalid("rule: nil match")
		}
		if args, err = m.appendArgs(args, &r, f); err != nil {
			return nil, err
		}
	}
	if r.Target != nil {
		if args, err = r.Target.appendArgs(args, f); err != nil {
			return nil, err
		}
	}
	return args, nil
}

// String renders r the way iptables-save prints it after "-A CHAIN" (with
// the rule's natural family); a rule that does not render shows its error.
func (r Rule) String() string {
	f := IPv4
	for _, a := range []Addr{r.Source, r.Destination} {
		if a.Prefix.IsValid() {
			f = FamilyOf(a.Prefix.Addr())
		}
	}
	if d, ok := r.Target.(DNAT); ok && d.To.IsValid() {
		f = FamilyOf(d.To)
	}
	s, err := r.Spec(f)
	if err != nil {
		return "<invalid rule: " + err.Error() + ">"
	}
	return s
}

// Spec renders r as one line of iptables-restore text (without "-A CHAIN "),
// quoting arguments the way iptables-save does.
func (r Rule) Spec(f Family) (string, error) {
	args, err := r.Args(f)
	if err != nil {
		return "", err
	}
	return joinArgs(args), nil
}

func joinArgs(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i > 0 && args[i-1] == "--comment" {
			saveString(&b, a)
			continue
		}
		if i > 0 && args[i-1] == "--comment" {
			saveString(&b, a)
			continue
		}
		quoteArg(&b, a)
	}
	return b.String()
}

// quoteArg writes a bare when it needs no quoting in a restore line, else
// as saveString does.
func quoteArg(b *strings.Builder, a string) {
	if a != "" && !strings.ContainsFunc(a, needsQuote) {
		b.WriteString(a)
		return
	}
	saveString(b, a)
}

// saveString writes a as iptables-save prints strings such as comments
// (xtables_save_string): bare when it consists only of [A-Za-z0-9_-], else
// in double quotes with the double quote, backslash and single quote
// escaped by a backslash.
func saveString(b *strings.Builder, a string) {
	if a != "" && !strings.ContainsFunc(a, func(r rune) bool {
		return !(r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) {
		b.WriteString(a)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(a); i++ {
		c := a[i]
		if c == '"' || c == '\\' || c == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
}

func needsQuote(r rune) bool {
	return r <= ' ' || r >= 0x7f || r == '"' || r == '\'' || r == '\\' || r == '#'
}

func validateIface(name string) error {
	if len(name) > 15 {
		return podnet.Invalid("interface name %q: longer than 15 bytes", name)
	}
	return validateWord("interface name", name)
}

func validateWord(what, s string) error {
	if s == "" || strings.ContainsFunc(s, needsQuote) || s[0] == '-' || s[0] == '!' {
		return podnet.Invalid("%s %q: empty, starts with '-' or '!', or contains a space, quote or control character", what, s)
	}
	return nil
}

// ---- matches ----

// Ports matches source and/or destination ports of the rule's Protocol,
// which must be tcp, udp or sctp.
//
// Equivalent to: -m tcp --sport S --dport D (with ! before a negated one)
type Ports struct {
	Src, Dst       PortRange
	NotSrc, NotDst bool
}

func (m Ports) appendArgs(args []string, r *Rule, _ Family) ([]string, error) {
	if !r.Protocol.HasPorts() {
		return nil, podnet.Invalid("rule: port match needs protocol tcp, udp or sctp, have %q", r.Protocol)
	}
	if m.Src.IsZero() && m.Dst.IsZero() {
		return nil, podnet.Invalid("rule: port match without ports")
	}
	args = append(args, "-m", string(r.Protocol))
	for _, p := range []struct {
		flag string
		r    PortRange
		not  bool
	}{{"--sport", m.Src, m.NotSrc}, {"--dport", m.Dst, m.NotDst}} {
		if p.r.IsZero() {
			continue
		}
		if err := p.r.validate("rule " + p.flag); err != nil {
			return nil, err
		}
		if p.not {
			args = append(args, "!")
		}
		args = append(args, p.flag, p.r.format(":"))
	}
	return args, nil
}

// AddrType matches the kernel's classification of the source or
// destination address: "LOCAL", "UNICAST", "BROADCAST", "MULTICAST" …
//
// Equivalent to: -m addrtype [!] --src-type T [!] --dst-type T [--limit-iface-in|--limit-iface-out]
type AddrType struct {
	Src, Dst       string
	NotSrc, NotDst bool
	LimitIfaceIn   bool
	LimitIfaceOut  bool
}

// DstLocal matches packets addressed to one of the namespace's own addresses.
//
// Equivalent to: -m addrtype --dst-type LOCAL
var DstLocal = AddrType{Dst: "LOCAL"}

func (m AddrType) appendArgs(args []string, _ *Rule, _ Family) ([]string, error) {
	if m.Src == "" && m.Dst == "" {
		return nil, podnet.Invalid("rule: addrtype match without a type")
	}
	args = append(args, "-m", "addrtype")
	for _, t := range []struct {
		flag, typ string
		not       bool
	}{{"--src-type", m.Src, m.NotSrc}, {"--dst-type", m.Dst, m.NotDst}} {
		if t.typ == "" {
			continue
		}
		if err := validateWord("address type", t.typ); err != nil {
			return nil, err
		}
		if t.not {
			args = append(args, "!")
		}
		args = append(args, t.flag, strings.ToUpper(t.typ))
	}
	if m.LimitIfaceIn {
		args = append(args, "--limit-iface-in")
	}
	if m.LimitIfaceOut {
		args = append(args, "--limit-iface-out")
	}
	return args, nil
}

// Mark matches the packet mark: (mark & Mask) == Value. Mask 0 means
// 0xffffffff (exact match).
//
// Equivalent to: -m mark [!] --mark VALUE[/MASK]
type Mark struct {
	Value, Mask uint32
	Not         bool
}

func (m Mark) appendArgs(args []string, _ *Rule, _ Family) ([]string, error) {
	args = append(args, "-m", "mark")
	if m.Not {
		args = append(args, "!")
	}
	v := hexU32(m.Value)
	if m.Mask != 0 && m.Mask != math.MaxUint32 {
		v += "/" + hexU32(m.Mask)
	}
	return append(args, "--mark", v), nil
}

func hexU32(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }

// Comment attaches a comment to the rule (at most 256 bytes, no newline).
//
// Equivalent to: -m comment --comment TEXT
type Comment string

func (m Comment) appendArgs(args []string, _ *Rule, _ Family) ([]string, error) {
	if len(m) > 255 || strings.ContainsAny(string(m), "\n\r\x00") {
		return nil, podnet.Invalid("rule: comment %q: longer than 255 bytes or contains a newline", string(m))
	}
	return append(args, "-m", "comment", "--comment", string(m)), nil
}

// Statistic matches a random share of packets, Probability in (0, 1]. The
// kernel keeps it as a 31-bit fraction, so the rendered value is the one
// iptables-save prints back (0.2 renders as 0.20000000019).
//
// Equivalent to: -m statistic --mode random --probability P
type Statistic struct {
	Probability float64
}

func (m Statistic) appendArgs(args []string, _ *Rule, _ Family) ([]string, error) {
	p := m.Probability
	if !(p > 0 && p <= 1) {
		return nil, podnet.Invalid("rule: statistic probability %v outside (0, 1]", p)
	}
	return append(args, "-m", "statistic", "--mode", "random", "--probability", formatProbability(p)), nil
}

// formatProbability quantizes p as libxt_statistic does and prints it with
// its 11 decimals.
func formatProbability(p float64) string {
	k := math.Round(p * 0x80000000)
	return strconv.FormatFloat(k/0x80000000, 'f', 11, 64)
}

// RecentMode is the action of a Recent match.
type RecentMode string

// Recent match actions.
const (
	RecentSet    RecentMode = "set"    // --set: record the address
	RecentCheck  RecentMode = "rcheck" // --rcheck: match when recorded
	RecentUpdate RecentMode = "update" // --update: match when recorded and refresh
	RecentRemove RecentMode = "remove" // --remove: match when recorded and forget
)

// Recent records addresses in a named list and matches against it; the
// service package uses it for ClientIP session affinity. Side is "rsource"
// (the default, the packet's source) or "rdest". Seconds (with Reap) only
// applies to check and update.
//
// Equivalent to: -m recent --rcheck --seconds S --reap --name NAME --mask MASK --rsource
type Recent struct {
	Mode    RecentMode
	Name    string
	Seconds uint32
	Reap    bool
	Dest    bool // --rdest instead of --rsource
	Not     bool
}

func (m Recent) appendArgs(args []string, _ *Rule, f Family) ([]string, error) {
	if err := validateWord("recent list name", m.Name); err != nil {
		return nil, err
	}
	switch m.Mode {
	case RecentSet, RecentCheck, RecentUpdate, RecentRemove:
	default:
		return nil, podnet.Invalid("rule: recent mode %q", m.Mode)
	}
	if m.Reap && m.Seconds == 0 {
		return nil, podnet.Invalid("rule: recent --reap without --seconds")
	}
	if m.Seconds != 0 && (m.Mode == RecentSet || m.Mode == RecentRemove) {
		return nil, podnet.Invalid("rule: recent --seconds with --%s", m.Mode)
	}
	args = append(args, "-m", "recent")
	if m.Not {
		args = append(args, "!")
	}
	args = append(args, "--"+string(m.Mode))
	if m.Seconds != 0 {
		args = append(args, "--seconds", strconv.FormatUint(uint64(m.Seconds), 10))
	}
	if m.Reap {
		args = append(args, "--reap")
	}
	mask := "255.255.255.255"
	if f == IPv6 {
		mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	}
	args = append(args, "--name", m.Name, "--mask", mask)
	if m.Dest {
		return append(args, "--rdest"), nil
	}
	return append(args, "--rsource"), nil
}

// Conntrack matches the connection tracking state: any of "NEW",
// "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT".
//
// Equivalent to: -m conntrack [!] --ctstate S1,S2
type Conntrack struct {
	States []string
	Not    bool
}

func (m Conntrack) appendArgs(args []string, _ *Rule, _ Family) ([]string, error) {
	if len(m.States) == 0 {
		return nil, podnet.Invalid("rule: conntrack match without states")
	}
	for _, s := range m.States {
		if err := validateWord("conntrack state", s); err != nil {
			return nil, err
		}
	}
	args = append(args, "-m", "conntrack")
	if m.Not {
		args = append(args, "!")
	}
	return append(args, "--ctstate", strings.ToUpper(strings.Join(m.States, ","))), nil
}

// PhysDev matches bridge ports of a bridged packet (needs br_netfilter).
//
// Equivalent to: -m physdev [--physdev-in IN] [--physdev-out OUT] [--physdev-is-bridged]
type PhysDev struct {
	In, Out   string
	IsBridged bool
}

func (m PhysDev) appendArgs(args []string, _ *Rule, _ Family) ([]string, error) {
	if m.In == "" && m.Out == "" && !m.IsBridged {
		return nil, podnet.Invalid("rule: empty physdev match")
	}
	args = append(args, "-m", "physdev")
	for _, p := range []struct{ flag, name string }{{"--physdev-in", m.In}, {"--physdev-out", m.Out}} {
		if p.name == "" {
			continue
		}
		if err := validateIface(p.name); err != nil {
			return nil, err
		}
		args = append(args, p.flag, p.name)
	}
	if m.IsBridged {
		args = append(args, "--physdev-is-bridged")
	}
	return args, nil
}

// ---- targets ----

// Masquerade rewrites the source to the outgoing interface's address.
//
// Equivalent to: -j MASQUERADE [--to-ports P[-Q]] [--random-fully]
type Masquerade struct {
	ToPorts     PortRange
	RandomFully bool
}

func (t Masquerade) appendArgs(args []string, _ Family) ([]string, error) {
	args = append(args, "-j", "MASQUERADE")
	if !t.ToPorts.IsZero() {
		if err := t.ToPorts.validate("MASQUERADE --to-ports"); err != nil {
			return nil, err
		}
		args = append(args, "--to-ports", t.ToPorts.format("-"))
	}
	if t.RandomFully {
		args = append(args, "--random-fully")
	}
	return args, nil
}

// SNAT rewrites the source address (and port, if Ports is set).
//
// Equivalent to: -j SNAT --to-source ADDR[:PORT[-PORT]] [--random-fully]
type SNAT struct {
	To          netip.Addr
	Ports       PortRange
	RandomFully bool
}

func (t SNAT) appendArgs(args []string, f Family) ([]string, error) {
	to, err := natAddr("SNAT", t.To, t.Ports, f)
	if err != nil {
		return nil, err
	}
	args = append(args, "-j", "SNAT", "--to-source", to)
	if t.RandomFully {
		args = append(args, "--random-fully")
	}
	return args, nil
}

// DNAT rewrites the destination address (and port, if Ports is set).
//
// Equivalent to: -j DNAT --to-destination ADDR[:PORT[-PORT]]
// (IPv6: [ADDR]:PORT)
type DNAT struct {
	To    netip.Addr
	Ports PortRange
}

// DNATTo returns the DNAT target to ap (its port, if non-zero).
func DNATTo(ap netip.AddrPort) DNAT {
	d := DNAT{To: ap.Addr().Unmap()}
	if ap.Port() != 0 {
		d.Ports = Port(ap.Port())
	}
	return d
}

func (t DNAT) appendArgs(args []string, f Family) ([]string, error) {
	to, err := natAddr("DNAT", t.To, t.Ports, f)
	if err != nil {
		return nil, err
	}
	return append(args, "-j", "DNAT", "--to-destination", to), nil
}

func natAddr(what string, a netip.Addr, ports PortRange, f Family) (string, error) {
	if !a.IsValid() {
		return "", podnet.Invalid("%s target without an address", what)
	}
	a = a.Unmap()
	if FamilyOf(a) != f {
		return "", podnet.Invalid("%s target %s in an %s rule", what, a, f)
	}
	if a.Zone() != "" {
		return "", podnet.Invalid("%s target %s: has a zone", what, a)
	}
	if ports.IsZero() {
		return a.String(), nil
	}
	if err := ports.validate(what + " target"); err != nil {
		return "", err
	}
	if f == IPv6 {
		return "[" + a.String() + "]:" + ports.format("-"), nil
	}
	return a.String() + ":" + ports.format("-"), nil
}

// SetMark sets the packet mark to (mark & ^Mask) ^ Value, the kernel's
// single MARK operation; OrMark, XorMark and SetMarkTo build the usual ones.
//
// Equivalent to: -j MARK --set-xmark VALUE/MASK
type SetMark struct {
	Value, Mask uint32
}

// OrMark returns the target that sets the bits of v.
//
// Equivalent to: -j MARK --or-mark V (saved as --set-xmark V/V)
func OrMark(v uint32) SetMark { return SetMark{Value: v, Mask: v} }

// XorMark returns the target that flips the bits of v.
//
// Equivalent to: -j MARK --xor-mark V (saved as --set-xmark V/0x0)
func XorMark(v uint32) SetMark { return SetMark{Value: v} }

// SetMarkTo returns the target that sets the whole mark to v.
//
// Equivalent to: -j MARK --set-mark V (saved as --set-xmark V/0xffffffff)
func SetMarkTo(v uint32) SetMark { return SetMark{Value: v, Mask: math.MaxUint32} }

func (t SetMark) appendArgs(args []string, _ Family) ([]string, error) {
	return append(args, "-j", "MARK", "--set-xmark", hexU32(t.Value)+"/"+hexU32(t.Mask)), nil
}

// Jump continues in another chain and comes back on RETURN.
//
// Equivalent to: -j CHAIN
type Jump string

func (t Jump) appendArgs(args []string, _ Family) ([]string, error) {
	if err := ValidateChainName(string(t)); err != nil && !IsBuiltin(string(t)) {
		return nil, err
	}
	return append(args, "-j", string(t)), nil
}

// Goto continues in another chain without coming back.
//
// Equivalent to: -g CHAIN
type Goto string

func (t Goto) appendArgs(args []string, _ Family) ([]string, error) {
	if err := ValidateChainName(string(t)); err != nil {
		return nil, err
	}
	return append(args, "-g", string(t)), nil
}

type verdict string

func (t verdict) appendArgs(args []string, _ Family) ([]string, error) {
	return append(args, "-j", string(t)), nil
}

// Verdicts without options.
var (
	Return Target = verdict("RETURN") // -j RETURN
	Accept Target = verdict("ACCEPT") // -j ACCEPT
	Drop   Target = verdict("DROP")   // -j DROP
)

// Reject drops the packet and answers with an error; With "" means the
// family's port-unreachable (what iptables-save prints when none is given).
//
// Equivalent to: -j REJECT --reject-with TYPE
type Reject struct {
	With string
}

func (t Reject) appendArgs(args []string, f Family) ([]string, error) {
	w := t.With
	if w == "" {
		w = "icmp-port-unreachable"
		if f == IPv6 {
			w = "icmp6-port-unreachable"
		}
	}
	if err := validateWord("reject type", w); err != nil {
		return nil, err
	}
	return append(args, "-j", "REJECT", "--reject-with", w), nil
}
