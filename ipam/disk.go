package ipam

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Names in a network's directory besides the lease files. The lock and
// last_reserved_ip.N files are host-local's; the dot files are podnet's and
// never parse as an address, so neither host-local nor podnet mistakes them
// for leases.
const (
	lockFile     = "lock"
	lastIPPrefix = "last_reserved_ip."
	tmpFile      = ".podnet-tmp"   // staging file, only ever written under the lock
	indexFile    = ".podnet-index" // podnet's cache of the directory; see index.go
	lineBreak    = "\r\n"
)

// DiskStore keeps leases in host-local's format: one file per address,
// <dataDir>/<network>/<ip>, mode 0600, holding "<containerID>\r\n<ifname>";
// last_reserved_ip.<set> holding the last address reserved from each range
// set; and the lock file, taken with flock(2). The reference host-local and
// podnet can therefore take turns on one directory.
//
// # Crash safety
//
// A lease is written to a staging file first and then hard-linked to its
// address name; link(2) fails when the name exists, so a reservation is
// exclusive like host-local's O_EXCL create, and a lease file appears with
// its whole content or not at all. A crash at any instant leaves at worst a
// staging file, which is removed under the lock by the next user.
//
// # Index
//
// Scanning the directory on every call (what host-local does) costs time
// proportional to the number of leases. DiskStore keeps an index of the
// directory in memory and in the .podnet-index file, stamped with the
// directory's inode change and modification times; it rescans only when the
// directory changed behind its back (host-local wrote, or a crash cut an
// update short). A store opened from the index file answers lookups by
// searching the file's records in place, building nothing, so the one call a
// CNI plugin process makes costs little more with 10,000 leases than with
// none; maps are built when every lease is needed or lookups are many.
//
// A DiskStore is safe for concurrent use by several goroutines.
type DiskStore struct {
	dir string
	sem chan struct{}

	// Valid while locked.
	lockf *os.File
	idx   *index
	j     journal
}

// NewDiskStore opens the leases of network under dataDir (DefaultDataDir
// when empty), creating the directories with mode 0755 like host-local.
//
// It refuses, with an error matching ErrInvalid, a network name that is not
// one path component, a dataDir or network directory that is a symlink, not a
// directory, owned by another user than root or the caller, or writable by
// group or others.
func NewDiskStore(dataDir, network string) (*DiskStore, error) {
	if err := ValidateNetwork(network); err != nil {
		return nil, err
	}
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	dataDir = filepath.Clean(dataDir)
	dir := filepath.Join(dataDir, network)
	for _, d := range []string{dataDir, dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create IPAM data directory: %w", err)
		}
		if err := checkDir(d); err != nil {
			return nil, err
		}
	}
	return &DiskStore{dir: dir, sem: make(chan struct{}, 1)}, nil
}

func checkDir(d string) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return fmt.Errorf("check IPAM data directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(d)
		return fmt.Errorf("%w: IPAM data directory %q is a symlink to %q; configure the target path instead", ErrInvalid, d, target)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: IPAM data directory %q is not a directory", ErrInvalid, d)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if uid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != uid {
		return fmt.Errorf("%w: IPAM data directory %q is owned by uid %d, not root or uid %d", ErrInvalid, d, st.Uid, uid)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: IPAM data directory %q has mode %v: writable by group or others", ErrInvalid, d, fi.Mode().Perm())
	}
	return nil
}

// Dir returns the network's directory, <dataDir>/<network>.
func (s *DiskStore) Dir() string { return s.dir }

// Lock implements Store. It takes flock(2) on the lock file, as host-local
// does, and brings the index up to date.
func (s *DiskStore) Lock(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	f, err := flockFile(ctx, filepath.Join(s.dir, lockFile))
	if err != nil {
		<-s.sem
		return fmt.Errorf("lock %q: %w", s.dir, err)
	}
	s.lockf = f
	if err := s.load(); err != nil {
		s.lockf.Close()
		s.lockf = nil
		<-s.sem
		return fmt.Errorf("load leases of %q: %w", s.dir, err)
	}
	return nil
}

// Unlock implements Store. It records the directory's new state in the
// index before letting others in.
func (s *DiskStore) Unlock() error {
	if s.lockf == nil {
		return errors.New("unlock: store not locked")
	}
	err := s.save()
	s.lockf.Close() // closing the descriptor drops the flock
	s.lockf = nil
	<-s.sem
	if err != nil {
		return fmt.Errorf("save index of %q: %w", s.dir, err)
	}
	return nil
}

// flockFile opens path and waits for an exclusive flock on it. Each call
// has its own open file description, so a wait abandoned on ctx can finish
// in the background and drop its lock without affecting later calls.
func flockFile(ctx context.Context, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		var err error
		for {
			if err = unix.Flock(int(f.Fd()), unix.LOCK_EX); !errors.Is(err, unix.EINTR) {
				break
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	case <-ctx.Done():
		go func() { <-done; f.Close() }()
		return nil, ctx.Err()
	}
}

func (s *DiskStore) path(a netip.Addr) string { return filepath.Join(s.dir, a.String()) }

// Reserve implements Store.
func (s *DiskStore) Reserve(a netip.Addr, o Owner, set int) (bool, error) {
	if s.idx.has(a) {
		return false, nil
	}
	content := strings.TrimSpace(o.ContainerID) + lineBreak + o.IfName
	tmp, err := s.stage(content)
	if err != nil {
		return false, fmt.Errorf("reserve %s: %w", a, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, s.path(a)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Written behind the index's back (a host-local in the same
			// clock tick); learn it and move on.
			return false, s.record(a, readOwner(s.path(a)))
		}
		return false, fmt.Errorf("reserve %s: %w", a, err)
	}
	if err := s.record(a, o); err != nil {
		return true, fmt.Errorf("reserve %s: %w", a, err)
	}
	if err := s.writeLast(set, a); err != nil {
		return true, fmt.Errorf("reserve %s: %w", a, err)
	}
	return true, nil
}

// stage writes content to the staging file, which must not exist: a
// leftover may be a hard link to a live lease, so it is unlinked, never
// truncated.
func (s *DiskStore) stage(content string) (string, error) {
	tmp := filepath.Join(s.dir, tmpFile)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", err
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// writeLast records a as the last address reserved from set, overwriting
// the file in place as host-local does: no new inode, which on ext4 is the
// expensive part of a reservation. A torn write is harmless, since
// LastReserved treats an unparsable file as absent.
func (s *DiskStore) writeLast(set int, a netip.Addr) error {
	f, err := os.OpenFile(filepath.Join(s.dir, lastIPPrefix+strconv.Itoa(set)), os.O_WRONLY|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	b := a.AppendTo(nil)
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Release implements Store.
func (s *DiskStore) Release(a netip.Addr) error {
	if err := os.Remove(s.path(a)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release %s: %w", a, err)
	}
	if s.idx.remove(a) {
		s.j.removed(a)
	}
	return nil
}

// LastReserved implements Store.
func (s *DiskStore) LastReserved(set int) (netip.Addr, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, lastIPPrefix+strconv.Itoa(set)))
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Addr{}, nil // torn or foreign: lose round-robin once, like host-local
	}
	return a.Unmap(), nil
}

// Owned implements Store.
func (s *DiskStore) Owned(o Owner) ([]netip.Addr, error) { return s.idx.owned(o), nil }

// Leases implements Store.
func (s *DiskStore) Leases() ([]Lease, error) {
	if err := s.built(); err != nil {
		return nil, err
	}
	return s.idx.leases()
}

func (s *DiskStore) record(a netip.Addr, o Owner) error {
	if err := s.idx.add(a, o); err != nil {
		// The journal could not be replayed; the directory is the truth,
		// and a was just linked into it.
		if err := s.built(); err != nil {
			return err
		}
		if err := s.idx.add(a, o); err != nil {
			return err
		}
	}
	s.j.added(a, o)
	return nil
}

// built makes s.idx a full index, rescanning the directory if the journal
// cannot be replayed; the journal is then rewritten on Unlock.
func (s *DiskStore) built() error {
	if s.idx.build() == nil {
		return nil
	}
	idx, err := s.scan()
	if err != nil {
		return err
	}
	s.idx = idx
	s.j.rewrite = true
	return nil
}

// readOwner parses a lease file: "<id>\r\n<ifname>", or "<id>" as very old
// host-local versions wrote. Anything unreadable yields the zero Owner.
func readOwner(path string) Owner {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Owner{}
	}
	defer f.Close()
	buf := make([]byte, MaxContainerIDLen+MaxIfNameLen+64)
	n, _ := f.Read(buf)
	return parseOwner(string(buf[:n]))
}

func parseOwner(content string) Owner {
	content = strings.TrimSpace(content)
	id, ifname, _ := strings.Cut(content, lineBreak)
	return Owner{ContainerID: id, IfName: ifname}
}

// scan rebuilds the index from the directory and removes staging files
// left by a crash.
func (s *DiskStore) scan() (*index, error) {
	d, err := os.Open(s.dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	idx := newIndex()
	for _, n := range names {
		if n == tmpFile {
			os.Remove(filepath.Join(s.dir, n))
			continue
		}
		a, err := netip.ParseAddr(n)
		if err != nil || a.String() != n {
			continue // lock, last_reserved_ip.N, .podnet-*, foreign files
		}
		idx.add(a, readOwner(filepath.Join(s.dir, n)))
	}
	return idx, nil
}
