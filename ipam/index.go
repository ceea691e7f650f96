package ipam

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
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
	j.pending = append(j.pending, '-')
	j.pending = a.AppendTo(j.pending)
	j.pending = append(j.pending, '\n')
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
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return err
	}
	if idx, gen, ok := parseIndex(data, st); ok {
		s.idx = idx
		*j = journal{f: f, ino: fst.Ino, size: int64(len(data)), crc: crc32.ChecksumIEEE(data), gen: gen, stamp: st, pending: j.pending}
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
	live := int64(len(s.idx.byAddr))*48 + 4096
	if j.rewrite || j.size > 4*live {
		b := []byte(indexHeader)
		for a, o := range s.idx.byAddr {
			if strings.ContainsAny(o.ContainerID+o.IfName, "\t\n") {
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

// parseIndex replays an index file; ok is false unless it ends with a valid
// checkpoint for the directory state st.
func parseIndex(data []byte, st dirStamp) (*index, uint64, bool) {
	if !bytes.HasPrefix(data, []byte(indexHeader)) || !bytes.HasSuffix(data, []byte("\n")) {
		return nil, 0, false
	}
	last := lastLine(data)
	body := data[:len(data)-len(last)-1]
	var gen uint64
	var cp dirStamp
	var crc uint32
	if _, err := fmt.Sscanf(string(last), "=%d %d %d %d %d %d %d %d", &gen, &cp.dev, &cp.ino, &cp.size, &cp.mtime, &cp.ctime, &cp.nlink, &crc); err != nil {
		return nil, 0, false
	}
	if cp != st || crc != crc32.ChecksumIEEE(body) {
		return nil, 0, false
	}
	n := bytes.Count(body, []byte("\n"))
	idx := &index{byAddr: make(map[netip.Addr]Owner, n), byOwner: make(map[Owner][]netip.Addr, n)}
	rest := body[len(indexHeader):]
	for len(rest) > 0 {
		line, tail, _ := bytes.Cut(rest, []byte("\n"))
		rest = tail
		if len(line) == 0 {
			return nil, 0, false
		}
		switch line[0] {
		case '+':
			f := bytes.SplitN(line[1:], []byte("\t"), 3)
			if len(f) != 3 {
				return nil, 0, false
			}
			a, err := netip.ParseAddr(string(f[0]))
			if err != nil {
				return nil, 0, false
			}
			idx.add(a, Owner{ContainerID: string(f[1]), IfName: string(f[2])})
		case '-':
			a, err := netip.ParseAddr(string(line[1:]))
			if err != nil {
				return nil, 0, false
			}
			idx.remove(a)
		case '=':
		default:
			return nil, 0, false
		}
	}
	return idx, gen, true
}
