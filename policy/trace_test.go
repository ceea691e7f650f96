package policy

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// packet is what the tracer runs through the recorded table: the first
// packet of a connection unless established is set.
type packet struct {
	src, dst    netip.Addr
	proto       Protocol
	dport       uint16
	established bool
}

// tracer evaluates the expressions the enforcer writes, as nf_tables
// does, over one packet.
type tracer struct {
	t     *recTable
	p     packet
	regs  [4 * 16]byte // NFT_REG_1…4, which NFT_REG32_00…15 alias
	rules int          // rules evaluated
}

func regOff(r uint32) int {
	if r >= 8 {
		return int(r-8) * 4
	}
	return int(r-1) * 16
}

// trace runs p through the hooked chains in priority order and reports
// whether every one accepts it, with the number of rules evaluated.
func (r *recorder) trace(p packet) (accepted bool, rules int, err error) {
	if r.table == nil {
		return true, 0, nil
	}
	var bases []*recChain
	for _, rc := range r.table.chains {
		if rc.c.Hooknum != nil {
			bases = append(bases, rc)
		}
	}
	slices.SortFunc(bases, func(a, b *recChain) int { return int(*a.c.Priority) - int(*b.c.Priority) })
	tr := &tracer{t: r.table, p: p}
	for _, b := range bases {
		v, err := tr.chain(b, 0)
		if err != nil {
			return false, tr.rules, err
		}
		if v == expr.VerdictDrop {
			return false, tr.rules, nil
		}
	}
	return true, tr.rules, nil
}

// chain runs the rules of c and returns the verdict: accept, drop, or
// return when the chain ends (its base chain's policy, accept, for a
// base chain).
func (tr *tracer) chain(c *recChain, depth int) (expr.VerdictKind, error) {
	if depth > 16 {
		return 0, fmt.Errorf("chain %s: jumps too deep", c.c.Name)
	}
	for _, rule := range c.rules {
		tr.rules++
		v, err := tr.rule(rule.Exprs)
		if err != nil {
			return 0, fmt.Errorf("chain %s: %w", c.c.Name, err)
		}
		switch {
		case v == nil: // no match, or no verdict
			continue
		case v.Kind == expr.VerdictAccept || v.Kind == expr.VerdictDrop:
			return v.Kind, nil
		case v.Kind == expr.VerdictReturn:
			return expr.VerdictReturn, nil
		case v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto:
			next := tr.t.chains[v.Chain]
			if next == nil {
				return 0, fmt.Errorf("no chain %s", v.Chain)
			}
			k, err := tr.chain(next, depth+1)
			if err != nil || k != expr.VerdictReturn || v.Kind == expr.VerdictGoto {
				return k, err
			}
		}
	}
	return expr.VerdictReturn, nil
}

// rule evaluates one rule: nil when an expression does not match or it
// has no verdict.
func (tr *tracer) rule(es []expr.Any) (*expr.Verdict, error) {
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Meta:
			tr.meta(e)
		case *expr.Payload:
			if err := tr.payload(e); err != nil {
				return nil, err
			}
		case *expr.Ct:
			var state uint32 = expr.CtStateBitNEW
			if tr.p.established {
				state = expr.CtStateBitESTABLISHED
			}
			copy(tr.regs[regOff(e.Register):], le32(state))
		case *expr.Bitwise:
			o, d := regOff(e.SourceRegister), regOff(e.DestRegister)
			for i := range int(e.Len) {
				tr.regs[d+i] = tr.regs[o+i]&e.Mask[i] ^ e.Xor[i]
			}
		case *expr.Cmp:
			got := tr.regs[regOff(e.Register) : regOff(e.Register)+len(e.Data)]
			if eq := bytes.Equal(got, e.Data); eq != (e.Op == expr.CmpOpEq) {
				return nil, nil
			}
		case *expr.Lookup:
			v, ok, err := tr.lookup(e)
			if err != nil || !ok {
				return nil, err
			}
			if v != nil {
				return v, nil
			}
		case *expr.Objref:
			tr.t.objects[e.Name]++
		case *expr.Verdict:
			return e, nil
		default:
			return nil, fmt.Errorf("tracer: no support for %T", e)
		}
	}
	return nil, nil
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

func (tr *tracer) meta(e *expr.Meta) {
	d := tr.regs[regOff(e.Register):]
	copy(d[:4], []byte{0, 0, 0, 0})
	switch e.Key {
	case expr.MetaKeyNFPROTO:
		d[0] = unix.NFPROTO_IPV4
		if tr.p.src.Is6() {
			d[0] = unix.NFPROTO_IPV6
		}
	case expr.MetaKeyL4PROTO:
		d[0] = protoNum(tr.p.proto)
	}
}

func (tr *tracer) payload(e *expr.Payload) error {
	var hdr []byte
	switch e.Base {
	case expr.PayloadBaseNetworkHeader:
		if tr.p.src.Is4() {
			hdr = make([]byte, 20)
			copy(hdr[12:], tr.p.src.AsSlice())
			copy(hdr[16:], tr.p.dst.AsSlice())
		} else {
			hdr = make([]byte, 40)
			copy(hdr[8:], tr.p.src.AsSlice())
			copy(hdr[24:], tr.p.dst.AsSlice())
		}
	case expr.PayloadBaseTransportHeader:
		hdr = []byte{0x9c, 0x40, byte(tr.p.dport >> 8), byte(tr.p.dport)} // source port 40000
	default:
		return fmt.Errorf("tracer: payload base %d", e.Base)
	}
	if int(e.Offset+e.Len) > len(hdr) {
		return fmt.Errorf("tracer: payload %d+%d beyond the header", e.Offset, e.Len)
	}
	d := regOff(e.DestRegister)
	n := (int(e.Len) + 3) / 4 * 4
	clear(tr.regs[d : d+n])
	copy(tr.regs[d:], hdr[e.Offset:e.Offset+e.Len])
	return nil
}

// lookup matches the key in the registers against the set: a member, or
// for a verdict map the element's verdict.
func (tr *tracer) lookup(e *expr.Lookup) (*expr.Verdict, bool, error) {
	rs := tr.t.sets[e.SetName]
	if rs == nil {
		return nil, false, fmt.Errorf("no set %s", e.SetName)
	}
	off := regOff(e.SourceRegister)
	key := tr.regs[off : off+int(rs.s.KeyType.Bytes)]
	var hit *nftables.SetElement
	switch {
	case rs.s.Interval && !rs.s.Concatenation:
		hit = rs.intervalOf(key)
	case rs.s.Interval:
		for _, el := range rs.elems {
			if bytes.Compare(el.Key, key) <= 0 && bytes.Compare(key, el.KeyEnd) <= 0 {
				hit = &el
				break
			}
		}
	default:
		if el, ok := rs.elems[string(key)]; ok {
			hit = &el
		}
	}
	if e.Invert {
		return nil, hit == nil, nil
	}
	if hit == nil {
		return nil, false, nil
	}
	if e.IsDestRegSet {
		return hit.VerdictData, true, nil
	}
	return nil, true, nil
}

// intervalOf returns the start of the interval holding key: the greatest
// element at or below it, when that is a start.
func (rs *recSet) intervalOf(key []byte) *nftables.SetElement {
	var best *nftables.SetElement
	for _, id := range slices.Sorted(maps.Keys(rs.elems)) {
		el := rs.elems[id]
		if bytes.Compare(el.Key, key) > 0 {
			break
		}
		if best == nil || bytes.Compare(el.Key, best.Key) > 0 || (bytes.Equal(el.Key, best.Key) && !el.IntervalEnd) {
			best = &el
		}
	}
	if best == nil || best.IntervalEnd {
		return nil
	}
	return best
}
