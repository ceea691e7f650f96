package netns_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// threadInode is the inode of the namespace the calling thread is in.
// /proc/thread-self is resolved by the thread making the one stat call: a
// path built from Gettid could name a thread the goroutine has left, and
// then read another goroutine's Do in progress.
func threadInode(t testing.TB) uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func inode(t testing.TB, ns *netns.NS) uint64 {
	t.Helper()
	ino, err := ns.Inode()
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func TestDoConcurrent(t *testing.T) {
	const namespaces, calls = 8, 1200
	var nss []*netns.NS
	var inos []uint64
	for range namespaces {
		ns := nstest.New(t)
		nss = append(nss, ns)
		inos = append(inos, inode(t, ns))
	}
	self, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	home := inode(t, self)
	if slices.Contains(inos, home) {
		t.Fatal("a new namespace has the test process's inode")
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	var wrongInside, wrongAfter, failed int
	for i := range calls {
		wg.Go(func() {
			k := i % namespaces
			var inside uint64
			err := nss[k].Do(func() error {
				inside = threadInode(t)
				// Yield inside fn so calls interleave on the scheduler.
				for range 3 {
					unix.Getpid()
				}
				return nil
			})
			after := threadInode(t)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
			}
			if inside != inos[k] {
				wrongInside++
			}
			if after != home {
				wrongAfter++
			}
		})
	}
	wg.Wait()
	if failed+wrongInside+wrongAfter > 0 {
		t.Fatalf("%d calls: %d failed, %d ran in the wrong namespace, %d callers left in another namespace",
			calls, failed, wrongInside, wrongAfter)
	}
	t.Logf("%d concurrent Do calls across %d namespaces: every fn saw its namespace, every caller stayed home", calls, namespaces)
}

func TestDoReturnsFnError(t *testing.T) {
	ns := nstest.New(t)
	want := errors.New("boom")
	if err := ns.Do(func() error { return want }); err != want {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
}

func TestNewIsIsolated(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	if inode(t, a) == inode(t, b) {
		t.Fatal("two New namespaces share an inode")
	}
	// The anonymous path can be opened by others while a is open.
	c, err := netns.Open(a.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if inode(t, c) != inode(t, a) {
		t.Fatalf("reopening %s gave another namespace", a.Path())
	}
}

func TestNamedVisibleToIproute2(t *testing.T) {
	ns := nstest.NewNamed(t)
	name := ns.Name()
	if name == "" || ns.Path() != filepath.Join(netns.RunDir, name) {
		t.Fatalf("Name %q Path %q", name, ns.Path())
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if !strings.Contains(string(out), name) {
		t.Fatalf("ip netns list does not show %s:\n%s", name, out)
	}
	// ip netns exec enters the same namespace: compare inodes.
	out, err = exec.Command("ip", "netns", "exec", name, "stat", "-L", "-c", "%i", "/proc/self/ns/net").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec: %v: %s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprint(inode(t, ns)); got != want {
		t.Fatalf("ip netns exec saw inode %s, handle has %s", got, want)
	}

	entries, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(entries, func(e netns.Entry) bool { return e.Name == name })
	if i < 0 || entries[i].Inode != inode(t, ns) {
		t.Fatalf("List = %+v, want %s with inode %d", entries, name, inode(t, ns))
	}
}

func TestNamedExistAndDelete(t *testing.T) {
	nstest.Require(t)
	name := nstest.NamePrefix + "exist"
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	defer netns.DeleteNamed(name)
	defer ns.Close()
	if _, err := netns.NewNamed(name); !errors.Is(err, netns.ErrExist) {
		t.Fatalf("second NewNamed: %v, want ErrExist", err)
	}
	if err := netns.DeleteNamed(name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netns.RunDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after delete: %v", err)
	}
	if err := netns.DeleteNamed(name); err != nil {
		t.Fatalf("delete is not idempotent: %v", err)
	}
	if _, err := netns.OpenName(name); !errors.Is(err, netns.ErrNotFound) {
		t.Fatalf("open deleted: %v, want ErrNotFound", err)
	}
	// The open handle keeps the namespace itself alive.
	if err := ns.Do(func() error { return nil }); err != nil {
		t.Fatalf("handle unusable after delete: %v", err)
	}
}

func TestIdentifyAndPIDs(t *testing.T) {
	ns := nstest.NewNamed(t)
	var cmd *exec.Cmd
	err := ns.Do(func() error {
		cmd = exec.Command("sleep", "60")
		return cmd.Start()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid

	names, err := netns.Identify(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{ns.Name()}) {
		t.Fatalf("Identify(%d) = %v, want [%s]", pid, names, ns.Name())
	}
	out, err := exec.Command("ip", "netns", "identify", fmt.Sprint(pid)).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != ns.Name() {
		t.Fatalf("ip netns identify %d = %q (%v), want %s", pid, out, err, ns.Name())
	}
	byPID, err := netns.OpenPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer byPID.Close()
	if inode(t, byPID) != inode(t, ns) {
		t.Fatal("OpenPID opened another namespace")
	}
	pids, err := ns.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pids, []int{pid}) {
		t.Fatalf("PIDs = %v, want [%d]", pids, pid)
	}
	// The test process is in no named namespace.
	if names, err := netns.Identify(os.Getpid()); err != nil || len(names) != 0 {
		t.Fatalf("Identify(self) = %v, %v", names, err)
	}
}

func TestBadInput(t *testing.T) {
	nstest.Require(t)
	for _, name := range []string{"", ".", "..", "a/b", "a b", "tab\t", strings.Repeat("x", 256)} {
		if _, err := netns.NewNamed(name); !errors.Is(err, netns.ErrInvalid) {
			t.Errorf("NewNamed(%q) = %v, want ErrInvalid", name, err)
		}
		if err := netns.DeleteNamed(name); !errors.Is(err, netns.ErrInvalid) {
			t.Errorf("DeleteNamed(%q) = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := netns.Open("/nonexistent/podnet"); !errors.Is(err, netns.ErrNotFound) {
		t.Errorf("Open(missing) = %v, want ErrNotFound", err)
	}
	if _, err := netns.Open("/proc/self/status"); !errors.Is(err, netns.ErrInvalid) {
		t.Errorf("Open(regular file) = %v, want ErrInvalid", err)
	}
	if _, err := netns.Open("/proc/self/ns/uts"); !errors.Is(err, netns.ErrInvalid) {
		t.Errorf("Open(uts namespace) = %v, want ErrInvalid", err)
	}
	if _, err := netns.OpenPID(-1); !errors.Is(err, netns.ErrInvalid) {
		t.Errorf("OpenPID(-1) = %v, want ErrInvalid", err)
	}
	if _, err := netns.OpenPID(1 << 30); !errors.Is(err, netns.ErrNotFound) {
		t.Errorf("OpenPID(no such pid) = %v, want ErrNotFound", err)
	}
	// A failed NewNamed leaves no file behind.
	entries, _ := os.ReadDir(netns.RunDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), " ") || e.Name() == "a" {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

// TestDoWithoutSysAdmin runs the test binary again without CAP_SYS_ADMIN
// (setpriv drops it from the bounding set): Do into the namespace the
// process is in must work, since it needs no setns, and Do into another
// must fail, which shows the capability is really gone.
func TestDoWithoutSysAdmin(t *testing.T) {
	if other := os.Getenv("PODNET_TEST_OTHER_NETNS"); other != "" {
		doWithoutSysAdmin(t, other)
		return
	}
	nstest.Require(t)
	ns := nstest.NewNamed(t)
	cmd := exec.Command("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--",
		os.Args[0], "-test.run=^TestDoWithoutSysAdmin$", "-test.v")
	cmd.Env = append(os.Environ(), "PODNET_TEST_OTHER_NETNS="+ns.Path())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestDoWithoutSysAdmin") {
		t.Fatalf("child without CAP_SYS_ADMIN: %v\n%s", err, out)
	}
}

func doWithoutSysAdmin(t *testing.T, other string) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var eff uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
			fmt.Sscanf(v, "%x", &eff)
		}
	}
	if eff&(1<<unix.CAP_SYS_ADMIN) != 0 {
		t.Fatalf("CapEff %x still has CAP_SYS_ADMIN", eff)
	}
	self, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	home := inode(t, self)
	var in uint64
	if err := self.Do(func() error { in = threadInode(t); return nil }); err != nil {
		t.Fatalf("Do into the current namespace without CAP_SYS_ADMIN: %v", err)
	}
	if in != home {
		t.Fatalf("fn ran in namespace %d, want the current one, %d", in, home)
	}
	ns, err := netns.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.Do(func() error { return nil }); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Do into another namespace without CAP_SYS_ADMIN: %v, want EPERM", err)
	}
}
