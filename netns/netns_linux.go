package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrExist    = podnet.ErrExist
	ErrInvalid  = podnet.ErrInvalid
)

// RunDir is where named namespaces are bind-mounted, as `ip netns` does.
const RunDir = "/var/run/netns"

// NS is an open network namespace. It keeps the namespace alive while open
// (even an anonymous one, which has no mount) and is safe for concurrent use.
// Close it when done; closing does not delete a named namespace.
type NS struct {
	file *os.File
	path string // what was opened; for a named namespace RunDir/NAME
	name string // set for namespaces under RunDir
}

// New creates an anonymous network namespace: it lives as long as the
// returned NS (or any process inside it) does, and appears in no list.
// The caller's thread is never moved into it.
//
// Equivalent to: unshare --net (on a throwaway thread)
func New() (*NS, error) {
	var ns *NS
	err := onNewThread(func(tid int) error {
		f, err := os.Open(threadNSPath(tid))
		if err != nil {
			return err
		}
		ns = &NS{file: f, path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())}
		return nil
	})
	if err != nil {
		return nil, &podnet.OpError{Op: "create", Kind: "netns", Err: err}
	}
	return ns, nil
}

// NewNamed creates a namespace bind-mounted at RunDir/name, visible to
// `ip netns list` and usable with `ip netns exec name`. It fails with ErrExist
// if the name is taken. On failure nothing is left behind.
//
// Equivalent to: ip netns add NAME
func NewNamed(name string) (*NS, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	path := filepath.Join(RunDir, name)
	opErr := func(err error) error {
		return &podnet.OpError{Op: "create", Kind: "netns", Name: name, Err: err}
	}
	if err := ensureRunDir(); err != nil {
		return nil, opErr(err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, opErr(ErrExist)
		}
		return nil, opErr(err)
	}
	f.Close()
	err = onNewThread(func(tid int) error {
		return unix.Mount(threadNSPath(tid), path, "none", unix.MS_BIND, "")
	})
	if err != nil {
		os.Remove(path)
		return nil, opErr(err)
	}
	ns, err := Open(path)
	if err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return nil, opErr(err)
	}
	return ns, nil
}

// DeleteNamed unmounts and removes the named namespace RunDir/name. The
// namespace itself disappears once no process and no open NS holds it.
// Deleting a name that does not exist succeeds.
//
// Equivalent to: ip netns delete NAME
func DeleteNamed(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	path := filepath.Join(RunDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return &podnet.OpError{Op: "delete", Kind: "netns", Name: name, Err: err}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return &podnet.OpError{Op: "delete", Kind: "netns", Name: name, Err: err}
	}
	return nil
}

// Open opens the namespace at path: a file under RunDir, /proc/PID/ns/net,
// or any bind mount of a namespace. It fails with ErrNotFound when the path
// does not exist and ErrInvalid when it is not a network namespace.
func Open(path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = ErrNotFound
		}
		return nil, &podnet.OpError{Op: "open", Kind: "netns", Name: path, Err: err}
	}
	if err := checkNetNS(f); err != nil {
		f.Close()
		return nil, &podnet.OpError{Op: "open", Kind: "netns", Name: path, Err: err}
	}
	ns := &NS{file: f, path: path}
	if filepath.Dir(path) == RunDir {
		ns.name = filepath.Base(path)
	}
	return ns, nil
}

// OpenName opens the named namespace RunDir/name.
func OpenName(name string) (*NS, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	return Open(filepath.Join(RunDir, name))
}

// OpenPID opens the network namespace of process pid.
//
// Equivalent to: nsenter -t PID -n
func OpenPID(pid int) (*NS, error) {
	if pid <= 0 {
		return nil, podnet.Invalid("pid %d", pid)
	}
	return Open(fmt.Sprintf("/proc/%d/ns/net", pid))
}

// Current opens the namespace of the calling thread. Called from an
// unlocked goroutine that is the namespace of the process (podnet never
// leaves a pool thread elsewhere).
func Current() (*NS, error) {
	return Open(threadNSPath(unix.Gettid()))
}

// Name returns the name under RunDir, or "" for a namespace opened otherwise.
func (ns *NS) Name() string { return ns.name }

// Path returns the path the namespace was opened from. For an anonymous
// namespace it is /proc/PID/fd/FD, which other programs of this machine
// (CNI plugins, nsenter --net=PATH) can open while ns is open.
func (ns *NS) Path() string { return ns.path }

// Fd returns the file descriptor of the open namespace, valid until Close.
func (ns *NS) Fd() int { return int(ns.file.Fd()) }

// String describes the namespace for messages: its path.
func (ns *NS) String() string {
	if ns == nil {
		return "<nil netns>"
	}
	return ns.path
}

// Inode returns the namespace's inode number, its identity: what
// `lsns -t net` prints in its NS column and `ls -i /var/run/netns` shows.
func (ns *NS) Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(ns.Fd(), &st); err != nil {
		return 0, &podnet.OpError{Op: "stat", Kind: "netns", Name: ns.path, Err: err}
	}
	return st.Ino, nil
}

// DialFd is the descriptor to give a netlink library so that its socket
// opens in ns: mdlayher/netlink's Config.NetNS, google/nftables'
// WithNetNSFd. It is 0, "where the thread is", when the calling thread is
// in ns already: the library then opens the socket without setns, which
// needs CAP_SYS_ADMIN, so a program acting on its own namespace needs only
// CAP_NET_ADMIN. Go threads that are not locked are all in the process's
// namespace (Do never hands one back elsewhere), so the answer holds for
// whichever thread the library's call runs on.
func (ns *NS) DialFd() int {
	var cur, want unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &cur) == nil && unix.Fstat(ns.Fd(), &want) == nil &&
		cur.Dev == want.Dev && cur.Ino == want.Ino {
		return 0
	}
	return ns.Fd()
}

// Close releases the handle. A named namespace stays; an anonymous one is
// destroyed by the kernel when nothing else holds it.
func (ns *NS) Close() error { return ns.file.Close() }

// Do runs fn on a fresh OS thread switched into ns and returns fn's error.
// The caller's goroutine and thread never change namespace. If switching the
// thread back fails, the thread is discarded instead of returning to Go's
// pool. Sockets opened inside fn stay in ns after fn returns; processes
// started inside fn (os/exec) run in ns. When the thread is in ns already
// there is no switch (no setns, which needs CAP_SYS_ADMIN), so a program
// acting on its own namespace needs no more than CAP_NET_ADMIN.
//
// Equivalent to: ip netns exec NAME ...
func (ns *NS) Do(fn func() error) error {
	err := onLockedThread(
		func(orig *os.File) (bool, error) {
			if sameFile(orig, ns.file) {
				return false, nil
			}
			return true, unix.Setns(ns.Fd(), unix.CLONE_NEWNET)
		},
		func(int) error { return fn() })
	if se, ok := err.(*switchError); ok {
		return &podnet.OpError{Op: se.step, Kind: "netns", Name: ns.path, Err: se.err}
	}
	return err
}

// Entry is one named namespace, as listed by List.
type Entry struct {
	Name  string
	Path  string
	Inode uint64
}

// List returns the namespaces bind-mounted under RunDir, sorted by name,
// with their inode numbers. Files there that are not mounted namespaces
// (leftovers of a crashed `ip netns add`) are skipped.
//
// Equivalent to: ip netns list; ls -i /var/run/netns
func List() ([]Entry, error) {
	des, err := os.ReadDir(RunDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, &podnet.OpError{Op: "list", Kind: "netns", Name: RunDir, Err: err}
	}
	var out []Entry
	for _, de := range des {
		p := filepath.Join(RunDir, de.Name())
		ino, ok := nsInode(p)
		if !ok {
			continue
		}
		out = append(out, Entry{Name: de.Name(), Path: p, Inode: ino})
	}
	return out, nil
}

// Identify returns the names under RunDir of the namespace process pid is
// in; empty when it has none (the root namespace, or an unnamed one).
//
// Equivalent to: ip netns identify PID
func Identify(pid int) ([]string, error) {
	if pid <= 0 {
		return nil, podnet.Invalid("pid %d", pid)
	}
	ino, ok := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid))
	if !ok {
		return nil, &podnet.OpError{Op: "identify", Kind: "netns", Name: "pid " + strconv.Itoa(pid), Err: ErrNotFound}
	}
	entries, err := List()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Inode == ino {
			names = append(names, e.Name)
		}
	}
	return names, nil
}

// PIDs returns the processes whose network namespace is ns, what
// `ls -l /proc/[1-9]*/ns/net | grep INODE` finds. Processes that exit or are
// not readable while scanning are skipped.
func (ns *NS) PIDs() ([]int, error) {
	ino, err := ns.Inode()
	if err != nil {
		return nil, err
	}
	des, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, de := range des {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		if i, ok := nsInode("/proc/" + de.Name() + "/ns/net"); ok && i == ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// ValidateName checks a name for RunDir: non-empty, at most 255 bytes, no
// '/', not "." or "..", no whitespace or control characters.
func ValidateName(name string) error {
	switch {
	case name == "":
		return podnet.Invalid("netns name is empty")
	case len(name) > 255:
		return podnet.Invalid("netns name %q: longer than 255 bytes", name)
	case name == "." || name == "..":
		return podnet.Invalid("netns name %q", name)
	case strings.ContainsAny(name, "/"):
		return podnet.Invalid("netns name %q: contains '/'", name)
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f {
			return podnet.Invalid("netns name %q: contains whitespace or a control character", name)
		}
	}
	return nil
}

func threadNSPath(tid int) string {
	return fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), tid)
}

// onNewThread runs fn on a locked thread that has just been moved into a new
// network namespace (unshare), passing the thread id, then moves the thread
// back. A thread that cannot be moved back is discarded.
func onNewThread(fn func(tid int) error) error {
	err := onLockedThread(func(*os.File) (bool, error) { return true, unix.Unshare(unix.CLONE_NEWNET) }, fn)
	if se, ok := err.(*switchError); ok {
		return fmt.Errorf("%s (unshare): %w", se.step, se.err)
	}
	return err
}

// switchError says which step of moving a thread between namespaces
// failed: "enter" or "leave".
type switchError struct {
	step string
	err  error
}

func (e *switchError) Error() string { return e.step + ": " + e.err.Error() }

// onLockedThread runs fn on a fresh goroutine locked to its thread, after
// enter has moved that thread into another network namespace, and moves it
// back afterwards; it returns fn's error, or a *switchError. enter gets the
// thread's namespace and reports whether it moved the thread (when it did
// not, there is nothing to move back). The caller's
// goroutine and thread never change namespace. When moving back fails the
// thread is never unlocked, so Go terminates it instead of reusing it in
// the wrong namespace; nor is it on any other failure.
func onLockedThread(enter func(orig *os.File) (bool, error), fn func(tid int) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		tid := unix.Gettid()
		orig, err := os.Open(threadNSPath(tid))
		if err != nil {
			errc <- &switchError{"enter", err}
			return
		}
		defer orig.Close()
		moved, err := enter(orig)
		if err != nil {
			errc <- &switchError{"enter", err}
			return
		}
		fnErr := fn(tid)
		if !moved {
			runtime.UnlockOSThread()
			errc <- fnErr
			return
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- &switchError{"leave", err}
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// sameFile reports whether two open files are the same inode: for namespace
// files, the same namespace.
func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// ensureRunDir makes RunDir a shared bind mount of itself, as iproute2 does,
// so that namespace mounts made here propagate to other mount namespaces.
func ensureRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == unix.EINVAL {
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", RunDir, err)
	}
	return nil
}

const nsfsMagic = 0x6e736673

func checkNetNS(f *os.File) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return err
	}
	if sfs.Type != nsfsMagic {
		return podnet.Invalid("not a namespace file")
	}
	// NS_GET_NSTYPE tells the namespace kind; older kernels lack it.
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err == nil && t != unix.CLONE_NEWNET {
		return podnet.Invalid("not a network namespace")
	}
	return nil
}

// nsInode returns the inode of the namespace at path if path is a mounted
// namespace (on nsfs).
func nsInode(path string) (uint64, bool) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil || sfs.Type != nsfsMagic {
		return 0, false
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}
