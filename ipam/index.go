package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// The index file is a journal: a header line, then records
//
//	+<ip>\t<containerID>\t<ifname>
//	-<ip>
//
// and, after each locked session that changed something, a checkpoint
//
//	=<gen> <dev> <ino> <size> <mtime> <ctime> <nlink> <crc>
//
// holding a random generation, the directory's stat after the session and
// the CRC-32 of every byte before the checkpoint. The file is trusted only
// when it ends with a checkpoint whose CRC matches and whose stat equals the
// directory's current one; anything else (host-local changed the directory,
// a crash cut an append short, the file is gone) means a rescan. The file is
// written in place, so writing it does not change the directory it describes.
const indexHeader = "podnet-ipam-index 1\n"

// dirStamp is what changes when an entry is added to or removed from a
// directory.
type dirStamp struct {
	dev, ino, nlink uint64
	size            int64
	mtime, ctime    int64 // nanoseconds
}

func statDir(dir string) (dirStamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return dirStamp{}, err
	}
	return dirStamp{
		dev: st.Dev, ino: st.Ino, nlink: uint64(st.Nlink), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}, nil
}

// journal is the DiskStore's handle on its index file.
type journal struct {
	f       *os.File // open while locked
	ino     uint64   // inode of the file whose state size, crc and gen describe
	size    int64    // bytes written so far
	crc     uint32   // CRC-32 of those bytes
	gen     uint64   // generation of the last checkpoint
	stamp   dirStamp // directory state at the last checkpoint
	pending []byte   // records of the current session
	rewrite bool     // the file must be rewritten from the index
}

func (j *journal) added(a netip.Addr, o Owner) {
	j.pending = appendRecord(j.pending, a, o)
}

func (j *journal) removed(a netip.Addr) {
	j.pending = appendRemoval(j.pending, a)
}

func appendRemoval(b []byte, a netip.Addr) []byte {
	b = append(b, '-')
	b = a.AppendTo(b)
	return append(b, '\n')
}

// recordable reports whether o can be written as a journal record, whose
// fields are separated by tabs and ended by a newline.
func recordable(o Owner) bool {
	return !strings.ContainsAny(o.ContainerID, "\t\n") && !strings.ContainsAny(o.IfName, "\t\n")
}

func appendRecord(b []byte, a netip.Addr, o Owner) []byte {
	b = append(b, '+')
	b = a.AppendTo(b)
	b = append(b, '\t')
	b = append(b, o.ContainerID...)
	b = append(b, '\t')
	b = append(b, o.IfName...)
	return append(b, '\n')
}

// load brings s.idx up to date with the directory, from memory, from the
// index file or by a scan, in that order of preference.
func (s *DiskStore) load() error {
	f, err := os.OpenFile(filepath.Join(s.dir, indexFile), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		f.Close()
		return err
	}
	st, err := statDir(s.dir) // after the open, which may have created the file
	if err != nil {
		f.Close()
		return err
	}
	j := &s.j
	j.pending = j.pending[:0]
	if s.idx != nil && !j.rewrite && j.ino == fst.Ino && j.size == fst.Size && j.stamp == st && j.checkGen(f) {
		j.f = f
		return nil
	}
	// One read of the size fstat gave (only lock holders write the file);
	// a file that changed size reads short or long and fails its checksum.
	data := make([]byte, fst.Size)
	n, err := io.ReadFull(f, data)
	if err != nil && err != io.ErrUnexpectedEOF {
		f.Close()
		return err
	}
	data = data[:n]
	if idx, gen, crc, ok := parseIndex(data, st); ok {
		s.idx = idx
		*j = journal{f: f, ino: fst.Ino, size: int64(len(data)), crc: crc, gen: gen, stamp: st, pending: j.pending}
		return nil
	}
	idx, err := s.scan()
	if err != nil {
		f.Close()
		return err
	}
	s.idx = idx
	*j = journal{f: f, ino: fst.Ino, rewrite: true, pending: j.pending}
	return nil
}

// checkGen reports whether the file still ends with our last checkpoint.
func (j *journal) checkGen(f *os.File) bool {
	buf := make([]byte, 128)
	off := max(j.size-int64(len(buf)), 0)
	n, _ := f.ReadAt(buf, off)
	line := lastLine(buf[:n])
	var gen uint64
	_, err := fmt.Sscanf(string(line), "=%d ", &gen)
	return err == nil && gen == j.gen
}

func lastLine(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

// save appends the session's records and a checkpoint to the index file,
// or rewrites the file when it was stale or has grown well past the index.
func (s *DiskStore) save() error {
	j := &s.j
	defer func() { j.f.Close(); j.f = nil }()
	if !j.rewrite && len(j.pending) == 0 {
		return nil
	}
	live := int64(s.idx.size())*48 + 4096
	if j.rewrite || j.size > 4*live {
		if err := s.built(); err != nil {
			return err
		}
		b := []byte(indexHeader)
		for a, o := range s.idx.byAddr {
			if !recordable(o) {
				// Cannot be recorded: leave a file that is never trusted.
				j.rewrite = true
				_, err := j.f.WriteAt([]byte(indexHeader), 0)
				if err == nil {
					err = j.f.Truncate(int64(len(indexHeader)))
				}
				return err
			}
			b = appendRecord(b, a, o)
		}
		j.size, j.crc, j.rewrite = 0, 0, false
		j.pending = b
	}
	st, err := statDir(s.dir)
	if err != nil {
		return err
	}
	crc := crc32.Update(j.crc, crc32.IEEETable, j.pending)
	gen := rand.Uint64()
	b := fmt.Appendf(j.pending, "=%d %d %d %d %d %d %d %d\n", gen, st.dev, st.ino, st.size, st.mtime, st.ctime, st.nlink, crc)
	if j.size == 0 {
		if err := j.f.Truncate(0); err != nil {
			return err
		}
	}
	if _, err := j.f.WriteAt(b, j.size); err != nil {
		j.rewrite = true
		return err
	}
	j.size += int64(len(b))
	j.crc = crc32.Update(j.crc, crc32.IEEETable, b)
	j.gen = gen
	j.stamp = st
	j.pending = j.pending[:0]
	return nil
}

// parseIndex checks an index file; ok is false unless it ends with a valid
// checkpoint for the directory state st. It returns a lazy index over the
// file's records, the checkpoint's generation and the CRC-32 of the whole
// file.
func parseIndex(data []byte, st dirStamp) (idx *index, gen uint64, crc uint32, ok bool) {
	if !bytes.HasPrefix(data, []byte(indexHeader)) || !bytes.HasSuffix(data, []byte("\n")) {
		return nil, 0, 0, false
	}
	last := lastLine(data)
	body := data[:len(data)-len(last)-1]
	var cp dirStamp
	var want uint32
	if _, err := fmt.Sscanf(string(last), "=%d %d %d %d %d %d %d %d", &gen, &cp.dev, &cp.ino, &cp.size, &cp.mtime, &cp.ctime, &cp.nlink, &want); err != nil {
		return nil, 0, 0, false
	}
	bodyCRC := crc32.ChecksumIEEE(body)
	if cp != st || bodyCRC != want {
		return nil, 0, 0, false
	}
	// The records, from the header's newline on, so that each follows a
	// '\n'; capped so that appending never writes over data.
	log := body[len(indexHeader)-1 : len(body) : len(body)]
	return &index{lazy: true, log: log}, gen, crc32.Update(bodyCRC, crc32.IEEETable, data[len(body):]), true
}

// errBadRecord reports a journal record that cannot be replayed.
var errBadRecord = errors.New("malformed index record")

// build turns a lazy index into maps by replaying its records.
func (x *index) build() error {
	if !x.lazy {
		return nil
	}
	n := bytes.Count(x.log, []byte("\n"))
	m := &index{byAddr: make(map[netip.Addr]Owner, n), byOwner: make(map[Owner][]netip.Addr, n)}
	rest := x.log[1:] // after the leading newline
	for len(rest) > 0 {
		line, tail, _ := bytes.Cut(rest, []byte("\n"))
		rest = tail
		if len(line) == 0 {
			return errBadRecord
		}
		switch line[0] {
		case '+':
			as, owner, _ := bytes.Cut(line[1:], []byte("\t"))
			id, ifname, ok := bytes.Cut(owner, []byte("\t"))
			a, err := netip.ParseAddr(string(as))
			if !ok || err != nil {
				return errBadRecord
			}
			m.add(a, Owner{ContainerID: string(id), IfName: string(ifname)})
		case '-':
			a, err := netip.ParseAddr(string(line[1:]))
			if err != nil {
				return errBadRecord
			}
			m.remove(a)
		case '=': // checkpoint of an earlier session
		default:
			return errBadRecord
		}
	}
	*x = *m
	return nil
}

// lastRecord finds the last record of the address written as as: its
// offset in x.log and its kind, '+' or '-'; op is 0 when there is none.
func (x *index) lastRecord(as []byte) (pos int, op byte) {
	pos = -1
	for i := 0; ; {
		j := bytes.Index(x.log[i:], as)
		if j < 0 {
			return pos, op
		}
		j += i
		i = j + 1
		end := j + len(as)
		if j < 2 || x.log[j-2] != '\n' || end >= len(x.log) {
			continue // part of a longer address or of an owner
		}
		switch {
		case x.log[j-1] == '+' && x.log[end] == '\t':
			pos, op = j-1, '+'
		case x.log[j-1] == '-' && x.log[end] == '\n':
			pos, op = j-1, '-'
		}
	}
}

// ownedLazy returns the addresses whose current record names exactly o.
// With limit > 0 it gives up, returning false, when o is named in more
// than limit records.
func (x *index) ownedLazy(o Owner, limit int) ([]netip.Addr, bool) {
	needle := make([]byte, 0, len(o.ContainerID)+len(o.IfName)+3)
	needle = append(needle, '\t')
	needle = append(needle, o.ContainerID...)
	needle = append(needle, '\t')
	needle = append(needle, o.IfName...)
	needle = append(needle, '\n')
	var out []netip.Addr
	for i, hits := 0, 0; ; hits++ {
		j := bytes.Index(x.log[i:], needle)
		if j < 0 {
			return out, true
		}
		if limit > 0 && hits == limit {
			return nil, false
		}
		j += i
		i = j + 1
		start := bytes.LastIndexByte(x.log[:j], '\n') + 1
		if x.log[start] != '+' {
			continue
		}
		as := x.log[start+1 : j]
		if pos, _ := x.lastRecord(as); pos != start {
			continue // released or leased again since
		}
		if a, err := netip.ParseAddr(string(as)); err == nil && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
}
