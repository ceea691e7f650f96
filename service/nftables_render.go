package service

import (
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
)

// This file turns a Service into the elements it contributes to the
// nftables tables (nftRendering) and arbitrates entries two Services
// claim; nftables_layout.go holds the tables' fixed sets, chains and
// expressions, nftables_sync.go writes them.

func protoNum(p Protocol) byte {
	switch p {
	case UDP:
		return unix.IPPROTO_UDP
	case SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func portBytes(port uint16) []byte { return []byte{byte(port >> 8), byte(port), 0, 0} }

func ipKey(a netip.Addr, p Protocol, port uint16) string {
	return string(slices.Concat(a.AsSlice(), []byte{protoNum(p), 0, 0, 0}, portBytes(port)))
}

func npKey(p Protocol, port uint16) string {
	return string(slices.Concat([]byte{protoNum(p), 0, 0, 0}, portBytes(port)))
}

// rangeBounds returns the first and last address of p.
func rangeBounds(p netip.Prefix) (first, last netip.Addr) {
	first = p.Masked().Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ = netip.AddrFromSlice(b)
	return first, last
}

func backendVal(ap netip.AddrPort) string {
	return string(slices.Concat(ap.Addr().AsSlice(), portBytes(ap.Port())))
}

func (r *nftRendering) add(f podnet.Family, set, key, val string) {
	r.elems[nftElem{f, set, key}] = val
}

// entryOf names the entry an element belongs to: every element but the
// hairpin set's is keyed by its entry's key (the backends' by the key and
// a slot).
func entryOf(e nftElem) string {
	key := e.key
	switch {
	case strings.HasSuffix(e.set, "-backends"):
		key = key[:len(key)-4] // the slot
	case e.set == "firewall-allow":
		key = key[:len(key)-int(nft.AddrLen(e.f))] // the source
	}
	tag := "ip/"
	if strings.HasPrefix(e.set, "nodeport") {
		tag = "np/"
	}
	return e.f.String() + "/" + tag + key
}

// claim gives n the entries of r no other Service holds, and then
// defines the endpoint-count sets (shapes) r's remaining elements need:
// a shape only a skipped element would use is never written.
func (np *nftPlane) claim(n Name, r *nftRendering) {
	np.arbitrate(n, r)
	for e := range r.elems {
		if sh, ok := shapeOf(e.set); ok {
			ff := np.fams[e.f]
			if _, had := ff.shapes[sh]; !had {
				ff.shapes[sh] = false
			}
			ff.shapeSet(sh)
		}
	}
}

// arbitrate gives n the entries of r no other Service holds, and drops from r
// the elements of those another holds (two Services with one external
// IP and port, say): the first keeps it, as the first iptables rule
// would, and the sync does not fail on a duplicate element.
func (np *nftPlane) arbitrate(n Name, r *nftRendering) {
	for e := range r.elems {
		id := entryOf(e)
		if o, held := np.owners[id]; held && o != n {
			delete(r.elems, e)
			if np.losers[id] == nil {
				np.losers[id] = map[Name]bool{}
				np.env.log.Warn("service port entry already held by another Service; skipped", "service", n.String(), "holder", o.String())
			}
			np.losers[id][n] = true
			continue
		}
		np.owners[id] = n
	}
}

// release lets go of the entries of n's old rendering, and returns them.
func (np *nftPlane) release(n Name, r *nftRendering) []string {
	var ids []string
	for e := range r.elems {
		if id := entryOf(e); np.owners[id] == n {
			delete(np.owners, id)
			ids = append(ids, id)
		}
	}
	return ids
}

// nftTarget is an endpoint list that entries lead to.
type nftTarget struct {
	eps []epChoice
	aff *nftAffinity // ClientIP affinity: the chain with the endpoints
}

// target returns the endpoints of a list, or nil when it is empty. A list
// with ClientIP affinity gets its own chain.
func (np *nftPlane) target(out *nftRendering, ff *nftFamily, sp *servicePort, local bool, eps []epChoice) *nftTarget {
	if len(eps) == 0 {
		return nil
	}
	t := &nftTarget{eps: eps}
	if sp.aff > 0 {
		l := "cluster"
		if local {
			l = "local"
		}
		t.aff = &nftAffinity{f: ff.f, chain: "affinity-" + hash16(sp.spn+string(sp.np)+l), timeout: sp.aff}
		for _, c := range eps {
			t.aff.eps = append(t.aff.eps, c.ap)
		}
		out.affinity = append(out.affinity, t.aff)
	}
	return t
}

// entry leads the key of kind k to t: a member of the set of its endpoint
// count with its endpoints in the kind's backends, or an element of the
// affinity map.
func (np *nftPlane) entry(out *nftRendering, ff *nftFamily, k nftKind, key string, t *nftTarget) {
	if t.aff != nil {
		out.add(ff.f, k.name+"-affinity", key, t.aff.chain)
		return
	}
	out.add(ff.f, nftShape{k, len(t.eps)}.set(), key, "")
	for i, c := range t.eps {
		out.add(ff.f, k.name+"-backends", key+string(nft.NE32(uint32(i))), backendVal(c.ap))
	}
}

// render returns the elements of s in every family the proxy serves,
// allocating shapes as needed.
func (np *nftPlane) render(s *Service) *nftRendering {
	out := &nftRendering{elems: map[nftElem]string{}, shared: map[nftElem]bool{}}
	aff := s.affinitySeconds()
	for _, f := range np.env.r.families {
		fs := np.env.r.family(s, f, aff)
		if fs == nil {
			continue
		}
		for _, p := range s.Ports {
			np.renderPort(out, np.fams[f], fs.port(p))
		}
	}
	return out
}

func (np *nftPlane) renderPort(out *nftRendering, ff *nftFamily, sp *servicePort) {
	f := ff.f
	svc := np.target(out, ff, sp, false, sp.svcEps)
	var svl *nftTarget
	if sp.intLocal || sp.extLocal {
		svl = np.target(out, ff, sp, true, sp.svlEps)
	}
	seen := map[netip.Addr]bool{}
	for _, c := range slices.Concat(sp.svcEps, sp.svlEps) {
		if a := c.ap.Addr(); !seen[a] {
			seen[a] = true
			out.shared[nftElem{f, "hairpin", string(slices.Concat(a.AsSlice(), a.AsSlice()))}] = true
		}
	}
	out.endpoints += len(seen)
	if sp.cip.IsValid() {
		out.shared[nftElem{f, "cluster-ips", string(sp.cip.AsSlice())}] = true
		k := ipKey(sp.cip, sp.proto, sp.p.Port)
		t := svc
		if sp.intLocal {
			t = svl
		}
		switch {
		case t == nil && svc != nil: // internal policy Local, endpoints elsewhere only
			out.add(f, "no-local-endpoints", k, "")
		case t == nil:
			out.add(f, "no-endpoints", k, "")
		default:
			np.entry(out, ff, nftKinds[0], k, t)
			if !sp.intLocal && sp.hasCIDR {
				out.add(f, "cluster-masq", k, "")
			}
		}
	}
	ext := svc
	if sp.extLocal {
		ext = svl
	}
	// Under a Local external policy, pods and the node itself reach
	// every endpoint (the node masqueraded); traffic from elsewhere only
	// this node's, and is dropped when it has none.
	entry := func(prefix string, m, pod nftKind, k string) {
		switch {
		case svc == nil:
			out.add(f, prefix+"-reject", k, "")
		case sp.extLocal:
			np.entry(out, ff, pod, k, svc)
			out.add(f, prefix+"-masq-local", k, "")
			if ext == nil {
				out.add(f, prefix+"-drop", k, "")
			} else {
				np.entry(out, ff, m, k, ext)
			}
		default:
			np.entry(out, ff, m, k, ext)
			out.add(f, prefix+"-masq", k, "")
		}
	}
	for _, eip := range sp.eips {
		entry("external", nftKinds[0], nftKinds[1], ipKey(eip, sp.proto, sp.p.Port))
	}
	for _, fw := range sp.fwIPs {
		k := ipKey(fw, sp.proto, sp.p.Port)
		out.add(f, "firewall-ips", k, "")
		for _, r := range sp.ranges {
			first, last := rangeBounds(r)
			out.add(f, "firewall-allow", k+string(first.AsSlice()), k+string(last.AsSlice()))
		}
	}
	if sp.servesNodePort() {
		entry("nodeport", nftKinds[2], nftKinds[3], npKey(sp.proto, sp.p.NodePort))
	}
}
