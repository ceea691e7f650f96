package service

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/netns"
)

// NftElement is one element of a proxy's nftables table, written as nft
// writes it.
type NftElement struct {
	Family podnet.Family
	Set    string // e.g. "ip-backends"
	Key    string // e.g. "10.96.0.10 . udp . 53 . 0"
	Value  string // e.g. "10.200.0.5 . 53", "goto affinity-…"; "" in a set
}

func (e NftElement) String() string {
	if e.Value == "" {
		return e.Set + ": " + e.Key
	}
	return e.Set + ": " + e.Key + " : " + e.Value
}

// NftElements reads every element of the nftables tables that a proxy with
// chain prefix prefix ("" for the default) keeps in ns, IPv4 first; none
// when it keeps none. It is how a Service's path shows under ModeNftables:
// the elements naming its addresses, where ModeIptables has rules.
//
// Equivalent to: nft list table ip PREFIX-proxy; nft list table ip6 PREFIX-proxy
func NftElements(ns *netns.NS, prefix string) ([]NftElement, error) {
	ch, err := NewChains(prefix)
	if err != nil {
		return nil, err
	}
	c, err := nftables.New(nftables.WithNetNSFd(ns.DialFd()))
	if err != nil {
		return nil, err
	}
	var out []NftElement
	for _, f := range []podnet.Family{podnet.IPv4, podnet.IPv6} {
		ff := newNftFamily(f, ch.TableName())
		tables, err := c.ListTablesOfFamily(ff.table.Family)
		if err != nil {
			return nil, fmt.Errorf("nftables tables in netns %q: %w", ns, err)
		}
		if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == ff.table.Name }) {
			continue
		}
		sets, err := c.GetSets(ff.table)
		if err != nil {
			return nil, fmt.Errorf("nftables table %s in netns %q: %w", ch.TableName(), ns, err)
		}
		for _, s := range sets {
			key, data, ok := ff.types(s.Name)
			if !ok {
				continue
			}
			s.Table = ff.table
			es, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("nftables set %s in netns %q: %w", s.Name, ns, err)
			}
			for _, e := range es {
				el := NftElement{Family: f, Set: s.Name, Key: decode(key, e.Key)}
				switch {
				case data == "" && s.IsMap:
					el.Value = decodeVerdict(e.Val)
				case data != "":
					el.Value = decode(data, e.Val)
				}
				out = append(out, el)
			}
		}
	}
	return out, nil
}

// types returns the key and data types of the set named name, as type
// names joined by " . ".
func (ff *nftFamily) types(name string) (key, data string, ok bool) {
	if s := ff.sets[name]; s != nil {
		if s.IsMap && s.DataType.Name != nftables.TypeVerdict.Name {
			data = s.DataType.Name
		}
		return s.KeyType.Name, data, true
	}
	if strings.HasPrefix(name, "affinity-") {
		return ff.addrType().Name, "", true
	}
	for _, k := range nftKinds {
		if n, ok := strings.CutPrefix(name, k.name+"-"); ok {
			if _, err := strconv.Atoi(n); err == nil {
				return ff.keyType(k).Name, "", true
			}
		}
	}
	return "", "", false
}

// decode writes b, a concatenation of the named types with each field
// padded to 4 bytes, as nft does.
func decode(types string, b []byte) string {
	var fields []string
	for _, t := range strings.Split(types, " . ") {
		size := map[string]int{"ipv4_addr": 4, "ipv6_addr": 16}[t]
		if size == 0 {
			size = 4
		}
		if len(b) < size {
			fields = append(fields, "?")
			break
		}
		v := b[:size]
		b = b[size:]
		switch t {
		case "ipv4_addr", "ipv6_addr":
			a, _ := netip.AddrFromSlice(v)
			fields = append(fields, a.String())
		case "inet_proto":
			fields = append(fields, map[byte]string{6: "tcp", 17: "udp", 132: "sctp"}[v[0]])
		case "inet_service":
			fields = append(fields, strconv.Itoa(int(binary.BigEndian.Uint16(v))))
		default:
			fields = append(fields, strconv.FormatUint(uint64(binary.NativeEndian.Uint32(v)), 10))
		}
	}
	return strings.Join(fields, " . ")
}

// decodeVerdict writes a verdict map's data (NFTA_VERDICT_CODE and
// NFTA_VERDICT_CHAIN attributes) as nft does: "goto CHAIN".
func decodeVerdict(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	kind, chain := "verdict", ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			switch int32(ad.Uint32()) {
			case unix.NFT_GOTO:
				kind = "goto"
			case unix.NFT_JUMP:
				kind = "jump"
			}
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	return strings.TrimSpace(kind + " " + chain)
}

// elemText prints an element's key and value as nft does.
func elemText(s *nftables.Set, e nftables.SetElement) (key, val string) {
	key = decode(s.KeyType.Name, e.Key)
	switch {
	case e.VerdictData != nil:
		val = verdictText(e.VerdictData)
	case s.IsMap && s.DataType.Name == nftables.TypeVerdict.Name:
		val = decodeVerdict(e.Val)
	case s.IsMap:
		val = decode(s.DataType.Name, e.Val)
	case s.Interval && len(e.KeyEnd) > 0:
		key += " - " + decode(s.KeyType.Name, e.KeyEnd)
	}
	return key, val
}

// verdictText prints a verdict as nft does: "goto CHAIN".
func verdictText(v *expr.Verdict) string {
	names := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return",
		expr.VerdictJump: "jump", expr.VerdictGoto: "goto"}
	return strings.TrimSpace(names[v.Kind] + " " + v.Chain)
}
