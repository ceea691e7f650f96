package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/podnet/podnet"
)

// Ruleset is the contents of one family's tables, as iptables-save prints
// them and as the Fake keeps them.
type Ruleset struct {
	Family Family
	Tables []*TableRules
}

// TableRules is one table of a Ruleset.
type TableRules struct {
	Name   Table
	Chains []*ChainRules // in iptables-save order: as listed by the ':' lines
}

// ChainRules is one chain of a table and its rules.
type ChainRules struct {
	Name   string
	Policy string   // "ACCEPT" or "DROP" for a built-in chain, "" for a user chain
	Rules  []string // each rule as iptables-save prints it after "-A NAME "
}

// Table returns the table called name, or nil.
func (rs *Ruleset) Table(name Table) *TableRules {
	if rs == nil {
		return nil
	}
	for _, t := range rs.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// Chain returns the chain called name, or nil.
func (t *TableRules) Chain(name string) *ChainRules {
	if t == nil {
		return nil
	}
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Parse parses the chain's rules into typed Rules. It fails with
// ErrNotSupported on a rule using a module this package does not model.
func (c *ChainRules) Parse(f Family) ([]Rule, error) {
	out := make([]Rule, 0, len(c.Rules))
	for _, s := range c.Rules {
		r, err := ParseRule(f, s)
		if err != nil {
			return nil, fmt.Errorf("parse rule in chain %q: %w", c.Name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// String renders the ruleset in iptables-save format, without counters and
// the "# Generated" comments: a stable text for golden tests.
func (rs *Ruleset) String() string {
	var b strings.Builder
	for _, t := range rs.Tables {
		fmt.Fprintf(&b, "*%s\n", t.Name)
		for _, c := range t.Chains {
			p := c.Policy
			if p == "" {
				p = "-"
			}
			fmt.Fprintf(&b, ":%s %s\n", c.Name, p)
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				fmt.Fprintf(&b, "-A %s %s\n", c.Name, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func (rs *Ruleset) clone() *Ruleset {
	n := &Ruleset{Family: rs.Family, Tables: make([]*TableRules, len(rs.Tables))}
	for i, t := range rs.Tables {
		nt := &TableRules{Name: t.Name, Chains: make([]*ChainRules, len(t.Chains))}
		for j, c := range t.Chains {
			nc := *c
			nc.Rules = append([]string(nil), c.Rules...)
			nt.Chains[j] = &nc
		}
		n.Tables[i] = nt
	}
	return n
}

// ParseSave parses the output of iptables-save (or ip6tables-save). Rules
// are kept as text; parse them with ChainRules.Parse or ParseRule.
func ParseSave(f Family, text string) (*Ruleset, error) {
	rs := &Ruleset{Family: f}
	var t *TableRules
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimRight(line, "\r")
		bad := func(why string) error {
			return podnet.Invalid("iptables-save line %d %q: %s", n+1, line, why)
		}
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '*':
			if t != nil {
				return nil, bad("table without COMMIT before it")
			}
			t = &TableRules{Name: Table(line[1:])}
			rs.Tables = append(rs.Tables, t)
		case line == "COMMIT":
			if t == nil {
				return nil, bad("COMMIT outside a table")
			}
			t = nil
		case t == nil:
			return nil, bad("outside a table")
		case line[0] == ':':
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, bad("chain line")
			}
			c := &ChainRules{Name: f[0]}
			if f[1] != "-" {
				c.Policy = f[1]
			}
			t.Chains = append(t.Chains, c)
		case strings.HasPrefix(line, "-A "):
			name, spec, _ := strings.Cut(line[3:], " ")
			c := t.Chain(name)
			if c == nil {
				return nil, bad("rule in undeclared chain")
			}
			c.Rules = append(c.Rules, spec)
		default:
			return nil, bad("unexpected line")
		}
	}
	if t != nil {
		return nil, podnet.Invalid("iptables-save output: table %q without COMMIT", t.Name)
	}
	return rs, nil
}

// splitArgs splits a restore line into arguments as iptables-restore does:
// on blanks, with double quotes grouping and a backslash escaping the next
// character.
func splitArgs(s string) ([]string, error) {
	var (
		args   []string
		cur    strings.Builder
		inWord bool
		quoted bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == '"':
			quoted = !quoted
			inWord = true
		case (c == ' ' || c == '\t') && !quoted:
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, podnet.Invalid("rule %q: unterminated quote", s)
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}

// ParseRule parses a rule as iptables-save prints it after "-A CHAIN ".
// Rules using modules or options this package does not model fail with
// ErrNotSupported; malformed ones with ErrInvalid.
func ParseRule(f Family, spec string) (Rule, error) {
	args, err := splitArgs(spec)
	if err != nil {
		return Rule{}, err
	}
	return ParseArgs(f, args)
}

// ParseArgs is ParseRule for an argument list, as Rule.Args returns it.
func ParseArgs(f Family, args []string) (Rule, error) {
	p := &ruleParser{f: f, args: args}
	r, err := p.parse()
	if err != nil {
		return Rule{}, fmt.Errorf("parse rule %q: %w", joinArgs(args), err)
	}
	return r, nil
}

type ruleParser struct {
	f    Family
	args []string
	i    int
}

func unsupported(format string, a ...any) error {
	return fmt.Errorf("%w: %s", podnet.ErrNotSupported, fmt.Sprintf(format, a...))
}

func (p *ruleParser) more() bool { return p.i < len(p.args) }

func (p *ruleParser) peek() string {
	if p.i < len(p.args) {
		return p.args[p.i]
	}
	return ""
}

func (p *ruleParser) next() (string, error) {
	if p.i >= len(p.args) {
		return "", podnet.Invalid("missing argument after %q", p.args[len(p.args)-1])
	}
	p.i++
	return p.args[p.i-1], nil
}

// not consumes a "!" and reports whether there was one.
func (p *ruleParser) not() bool {
	if p.peek() == "!" {
		p.i++
		return true
	}
	return false
}

func (p *ruleParser) parse() (Rule, error) {
	var r Rule
	for p.more() {
		neg := p.not()
		flag, err := p.next()
		if err != nil {
			return r, err
		}
		switch flag {
		case "-s", "--source", "-d", "--destination":
			v, err := p.next()
			if err != nil {
				return r, err
			}
			pf, err := parsePrefix(v)
			if err != nil {
				return r, err
			}
			if flag[1] == 's' || flag == "--source" {
				r.Source = Addr{Prefix: pf, Not: neg}
			} else {
				r.Destination = Addr{Prefix: pf, Not: neg}
			}
		case "-i", "--in-interface", "-o", "--out-interface":
			v, err := p.next()
			if err != nil {
				return r, err
			}
			if flag == "-i" || flag == "--in-interface" {
				r.In = Iface{Name: v, Not: neg}
			} else {
				r.Out = Iface{Name: v, Not: neg}
			}
		case "-p", "--protocol":
			if neg {
				return r, unsupported("negated protocol")
			}
			v, err := p.next()
			if err != nil {
				return r, err
			}
			r.Protocol = Protocol(v)
		case "-m", "--match":
			if neg {
				return r, podnet.Invalid("! before -m")
			}
			name, err := p.next()
			if err != nil {
				return r, err
			}
			m, err := p.match(name, &r)
			if err != nil {
				return r, err
			}
			r.Matches = append(r.Matches, m)
		case "-j", "--jump":
			name, err := p.next()
			if err != nil {
				return r, err
			}
			if r.Target, err = p.target(name); err != nil {
				return r, err
			}
		case "-g", "--goto":
			name, err := p.next()
			if err != nil {
				return r, err
			}
			r.Target = Goto(name)
		default:
			return r, unsupported("option %q", flag)
		}
		if r.Target != nil && p.more() {
			return r, unsupported("arguments after the target: %q", p.args[p.i:])
		}
	}
	return r, nil
}

// options consumes the "[!] --opt [value]" arguments of a module or target.
// valued tells which options take a value.
func (p *ruleParser) options(valued map[string]bool, fn func(opt, val string, neg bool) error) error {
	for p.more() {
		save := p.i
		neg := p.not()
		opt := p.peek()
		if !strings.HasPrefix(opt, "--") {
			p.i = save
			return nil
		}
		p.i++
		var val string
		if valued[opt] {
			v, err := p.next()
			if err != nil {
				return err
			}
			val = v
		}
		if err := fn(opt, val, neg); err != nil {
			return err
		}
	}
	return nil
}

func noNeg(opt string, neg bool) error {
	if neg {
		return unsupported("negated %s", opt)
	}
	return nil
}

// match parses the options of match module name; r holds what the rule
// has parsed so far.
func (p *ruleParser) match(name string, r *Rule) (Match, error) {
	switch name {
	case "tcp", "udp", "sctp":
		return p.matchPorts(name, r.Protocol)
	case "addrtype":
		return p.matchAddrType()
	case "mark":
		return p.matchMark()
	case "comment":
		return p.matchComment()
	case "statistic":
		return p.matchStatistic()
	case "recent":
		return p.matchRecent()
	case "conntrack":
		return p.matchConntrack()
	case "physdev":
		return p.matchPhysDev()
	}
	return nil, unsupported("match module %q", name)
}

// matchPorts parses -m tcp, udp or sctp, which iptables accepts only after
// the same -p.
func (p *ruleParser) matchPorts(name string, proto Protocol) (Ports, error) {
	if Protocol(name) != proto {
		return Ports{}, unsupported("-m %s with protocol %q", name, proto)
	}
	var m Ports
	err := p.options(map[string]bool{"--sport": true, "--dport": true, "--source-port": true, "--destination-port": true}, func(opt, val string, neg bool) error {
		pr, err := parsePortRange(val, ":")
		if err != nil {
			return err
		}
		switch opt {
		case "--sport", "--source-port":
			m.Src, m.NotSrc = pr, neg
		case "--dport", "--destination-port":
			m.Dst, m.NotDst = pr, neg
		default:
			return unsupported("%s option %s", name, opt)
		}
		return nil
	})
	return m, err
}

func (p *ruleParser) matchAddrType() (AddrType, error) {
	var m AddrType
	err := p.options(map[string]bool{"--src-type": true, "--dst-type": true}, func(opt, val string, neg bool) error {
		switch opt {
		case "--src-type":
			m.Src, m.NotSrc = val, neg
		case "--dst-type":
			m.Dst, m.NotDst = val, neg
		case "--limit-iface-in":
			m.LimitIfaceIn = true
		case "--limit-iface-out":
			m.LimitIfaceOut = true
		default:
			return unsupported("addrtype option %s", opt)
		}
		return nil
	})
	return m, err
}

func (p *ruleParser) matchMark() (Mark, error) {
	var m Mark
	err := p.options(map[string]bool{"--mark": true}, func(opt, val string, neg bool) error {
		if opt != "--mark" {
			return unsupported("mark option %s", opt)
		}
		v, mask, err := parseValueMask(val)
		if err != nil {
			return err
		}
		// Mark spells the exact-match mask 0xffffffff as 0.
		if mask == math.MaxUint32 {
			mask = 0
		}
		m = Mark{Value: v, Mask: mask, Not: neg}
		return nil
	})
	return m, err
}

func (p *ruleParser) matchComment() (Comment, error) {
	var m Comment
	err := p.options(map[string]bool{"--comment": true}, func(opt, val string, neg bool) error {
		if opt != "--comment" {
			return unsupported("comment option %s", opt)
		}
		m = Comment(val)
		return noNeg(opt, neg)
	})
	return m, err
}

// matchStatistic parses -m statistic in random mode, the only one Statistic
// models.
func (p *ruleParser) matchStatistic() (Statistic, error) {
	var m Statistic
	random := false
	err := p.options(map[string]bool{"--mode": true, "--probability": true}, func(opt, val string, neg bool) error {
		if err := noNeg(opt, neg); err != nil {
			return err
		}
		switch opt {
		case "--mode":
			if val != "random" {
				return unsupported("statistic mode %q", val)
			}
			random = true
		case "--probability":
			v, err := strconv.ParseFloat(val, 64)
			if err != nil || !(v > 0 && v <= 1) {
				return podnet.Invalid("statistic probability %q", val)
			}
			// Quantized as libxt_statistic does (see formatProbability).
			m.Probability = math.Round(v*0x80000000) / 0x80000000
		default:
			return unsupported("statistic option %s", opt)
		}
		return nil
	})
	if err == nil && (!random || m.Probability == 0) {
		err = unsupported("statistic without --mode random --probability")
	}
	return m, err
}

func (p *ruleParser) matchRecent() (Recent, error) {
	var m Recent
	err := p.options(map[string]bool{"--seconds": true, "--name": true, "--mask": true}, func(opt, val string, neg bool) error {
		switch opt {
		case "--set", "--rcheck", "--update", "--remove":
			m.Mode = RecentMode(opt[2:])
			m.Not = neg
			return nil
		}
		if err := noNeg(opt, neg); err != nil {
			return err
		}
		return recentOption(&m, opt, val)
	})
	return m, err
}

// recentOption sets one -m recent option other than the mode.
func recentOption(m *Recent, opt, val string) error {
	switch opt {
	case "--seconds":
		v, err := strconv.ParseUint(val, 10, 32)
		if err != nil {
			return podnet.Invalid("recent --seconds %q", val)
		}
		m.Seconds = uint32(v)
	case "--reap":
		m.Reap = true
	case "--name":
		m.Name = val
	case "--mask":
		// Recent models only the default mask, all ones.
		a, err := netip.ParseAddr(val)
		if err != nil || !isAllOnes(a) {
			return unsupported("recent --mask %q", val)
		}
	case "--rsource":
		m.Dest = false
	case "--rdest":
		m.Dest = true
	default:
		return unsupported("recent option %s", opt)
	}
	return nil
}

func (p *ruleParser) matchConntrack() (Conntrack, error) {
	var m Conntrack
	err := p.options(map[string]bool{"--ctstate": true}, func(opt, val string, neg bool) error {
		if opt != "--ctstate" {
			return unsupported("conntrack option %s", opt)
		}
		m = Conntrack{States: strings.Split(val, ","), Not: neg}
		return nil
	})
	return m, err
}

func (p *ruleParser) matchPhysDev() (PhysDev, error) {
	var m PhysDev
	err := p.options(map[string]bool{"--physdev-in": true, "--physdev-out": true}, func(opt, val string, neg bool) error {
		if err := noNeg(opt, neg); err != nil {
			return err
		}
		switch opt {
		case "--physdev-in":
			m.In = val
		case "--physdev-out":
			m.Out = val
		case "--physdev-is-bridged":
			m.IsBridged = true
		default:
			return unsupported("physdev option %s", opt)
		}
		return nil
	})
	return m, err
}

func isAllOnes(a netip.Addr) bool {
	for _, b := range a.AsSlice() {
		if b != 0xff {
			return false
		}
	}
	return true
}

// targetValued tells which target options take a value.
var targetValued = map[string]bool{"--to-ports": true, "--to-source": true, "--to-destination": true,
	"--set-xmark": true, "--set-mark": true, "--or-mark": true, "--xor-mark": true, "--and-mark": true, "--reject-with": true}

// target parses the options of target name: a built-in verdict or target,
// else a jump to a user chain.
func (p *ruleParser) target(name string) (Target, error) {
	switch name {
	case "RETURN", "ACCEPT", "DROP":
		return verdict(name), nil
	case "MASQUERADE":
		return p.targetMasquerade()
	case "SNAT":
		return p.targetSNAT()
	case "DNAT":
		return p.targetDNAT()
	case "MARK":
		return p.targetMark()
	case "REJECT":
		return p.targetReject()
	}
	if strings.HasPrefix(p.peek(), "--") {
		return nil, unsupported("target %q", name)
	}
	if err := ValidateChainName(name); err != nil {
		return nil, err
	}
	return Jump(name), nil
}

func (p *ruleParser) targetMasquerade() (Masquerade, error) {
	var m Masquerade
	err := p.options(targetValued, func(opt, val string, neg bool) error {
		switch opt {
		case "--to-ports":
			pr, err := parsePortRange(val, "-")
			m.ToPorts = pr
			return err
		case "--random-fully":
			m.RandomFully = true
			return nil
		}
		return unsupported("MASQUERADE option %s", opt)
	})
	return m, err
}

func (p *ruleParser) targetSNAT() (SNAT, error) {
	var s SNAT
	err := p.options(targetValued, func(opt, val string, neg bool) error {
		switch opt {
		case "--to-source":
			a, pr, err := parseNATAddr(val)
			s.To, s.Ports = a, pr
			return err
		case "--random-fully":
			s.RandomFully = true
			return nil
		}
		return unsupported("SNAT option %s", opt)
	})
	return s, err
}

func (p *ruleParser) targetDNAT() (DNAT, error) {
	var d DNAT
	err := p.options(targetValued, func(opt, val string, neg bool) error {
		if opt != "--to-destination" {
			return unsupported("DNAT option %s", opt)
		}
		a, pr, err := parseNATAddr(val)
		d.To, d.Ports = a, pr
		return err
	})
	return d, err
}

// targetMark parses -j MARK, whose every spelling is a SetMark.
func (p *ruleParser) targetMark() (SetMark, error) {
	var m SetMark
	err := p.options(targetValued, func(opt, val string, neg bool) error {
		v, mask, err := parseValueMask(val)
		if err != nil {
			return err
		}
		switch opt {
		case "--set-xmark":
			m = SetMark{Value: v, Mask: mask}
		case "--set-mark":
			m = SetMark{Value: v, Mask: mask}
		case "--or-mark":
			m = OrMark(v)
		case "--xor-mark":
			m = XorMark(v)
		case "--and-mark":
			m = SetMark{Mask: ^v}
		default:
			return unsupported("MARK option %s", opt)
		}
		return nil
	})
	return m, err
}

// targetReject parses -j REJECT; the family's default reply is spelled
// as the empty With.
func (p *ruleParser) targetReject() (Reject, error) {
	var rj Reject
	err := p.options(targetValued, func(opt, val string, neg bool) error {
		if opt != "--reject-with" {
			return unsupported("REJECT option %s", opt)
		}
		rj.With = val
		if val == "icmp-port-unreachable" && p.f == IPv4 || val == "icmp6-port-unreachable" && p.f == IPv6 {
			rj.With = ""
		}
		return nil
	})
	return rj, err
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return pf, podnet.Invalid("prefix %q", s)
		}
		return pf, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, podnet.Invalid("address %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePortRange(s, sep string) (PortRange, error) {
	first, last, rng := strings.Cut(s, sep)
	f, err := strconv.ParseUint(first, 10, 16)
	if err != nil {
		return PortRange{}, podnet.Invalid("port %q", s)
	}
	r := PortRange{First: uint16(f)}
	if rng {
		l, err := strconv.ParseUint(last, 10, 16)
		if err != nil {
			return PortRange{}, podnet.Invalid("port range %q", s)
		}
		if l != f {
			r.Last = uint16(l)
		}
	}
	return r, nil
}

func parseValueMask(s string) (v, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v64, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, podnet.Invalid("mark %q", s)
	}
	m64 := uint64(math.MaxUint32)
	if hasMask {
		if m64, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, podnet.Invalid("mark mask %q", s)
		}
	}
	return uint32(v64), uint32(m64), nil
}

// parseNATAddr parses ADDR, ADDR:PORT[-PORT], [ADDR6] or [ADDR6]:PORT[-PORT].
func parseNATAddr(s string) (netip.Addr, PortRange, error) {
	host, ports := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return netip.Addr{}, PortRange{}, podnet.Invalid("NAT address %q", s)
		}
		host, ports = s[1:end], strings.TrimPrefix(s[end+1:], ":")
	} else if strings.Count(s, ":") == 1 {
		host, ports, _ = strings.Cut(s, ":")
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, PortRange{}, podnet.Invalid("NAT address %q", s)
	}
	if ports == "" {
		return a, PortRange{}, nil
	}
	pr, err := parsePortRange(ports, "-")
	return a, pr, err
}
