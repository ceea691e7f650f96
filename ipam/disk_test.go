package ipam

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/testenv/refbin"
)

// TestMain lets the test binary serve as the child process of the
// cross-process tests.
func TestMain(m *testing.M) {
	if dir := os.Getenv("PODNET_IPAM_CHILD"); dir != "" {
		if err := child(dir, os.Getenv("PODNET_IPAM_CHILD_ID"), os.Getenv("PODNET_IPAM_CHILD_N")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var childSet = set("10.10.0.0/16")

// child allocates n addresses (for owners <id>-0 …), printing each; with
// n = "loop" it allocates and releases forever, which the crash test kills.
func child(dir, id, n string) error {
	s, err := NewDiskStore(dir, "net")
	if err != nil {
		return err
	}
	a, err := NewAllocator(s, childSet)
	if err != nil {
		return err
	}
	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	count, loop := 0, n == "loop"
	if !loop {
		count, _ = strconv.Atoi(n)
	}
	for i := 0; loop || i < count; i++ {
		o := Owner{ContainerID: fmt.Sprintf("%s-%d", id, i), IfName: "eth0"}
		got, err := a.Allocate(ctx, o)
		if err != nil {
			return err
		}
		if loop && i >= 3 {
			if _, err := a.Release(ctx, Owner{ContainerID: fmt.Sprintf("%s-%d", id, i-3), IfName: "eth0"}); err != nil {
				return err
			}
		}
		fmt.Fprintln(out, got[0].Address.Addr())
		if loop {
			out.Flush()
		}
	}
	return out.Flush()
}

func childCmd(t *testing.T, dir, id, n string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PODNET_IPAM_CHILD="+dir, "PODNET_IPAM_CHILD_ID="+id, "PODNET_IPAM_CHILD_N="+n)
	cmd.Stderr = os.Stderr
	return cmd
}

// checkStore opens dir as a new process would and checks that the index
// agrees with a scan, that every lease file has a valid owner and that no
// owner holds two addresses of one family.
func checkStore(t *testing.T, dir string) []Lease {
	t.Helper()
	s, err := NewDiskStore(dir, "net")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Lock(ctx); err != nil {
		t.Fatalf("store does not open: %v", err)
	}
	defer s.Unlock()
	scanned, err := s.scan()
	if err != nil {
		t.Fatal(err)
	}
	want, err := scanned.leases()
	if err != nil {
		t.Fatal(err)
	}
	// A store opened from its index answers from the journal in place
	// before it builds anything: check those answers too.
	if s.idx.lazy {
		for _, l := range want {
			s.idx.lookups = 0
			if !s.idx.has(l.Addr) {
				t.Errorf("lazy index: %s not leased", l.Addr)
			}
			if l.Owner.IfName == "" {
				continue // found through an owner with an interface name
			}
			if got, _ := s.Owned(l.Owner); !slices.Contains(got, l.Addr) {
				t.Errorf("lazy index: %v owns %v, want %s among them", l.Owner, got, l.Addr)
			}
		}
		if !s.idx.lazy {
			t.Fatal("lazy index built its maps during the checks")
		}
	}
	leases, err := s.Leases()
	if err != nil {
		t.Fatal(err)
	}
	if got := want; !slices.Equal(leases, got) {
		t.Fatalf("index has %d leases, directory %d:\nindex %v\ndir   %v", len(leases), len(got), leases, got)
	}
	type key struct {
		o  Owner
		v4 bool
	}
	seen := map[key]Lease{}
	for _, l := range leases {
		if err := l.Owner.Validate(); err != nil {
			t.Errorf("lease %v: %v", l, err)
		}
		k := key{l.Owner, l.Addr.Is4()}
		if prev, ok := seen[k]; ok {
			t.Errorf("owner %v holds %v and %v", l.Owner, prev.Addr, l.Addr)
		}
		seen[k] = l
	}
	return leases
}

func TestDiskFormat(t *testing.T) {
	dataDir := t.TempDir()
	s, err := NewDiskStore(dataDir, "net")
	if err != nil {
		t.Fatal(err)
	}
	a := newAlloc(t, s, set("10.1.0.0/24"), set("fd00::/64"))
	mustAllocate(t, a, Owner{ContainerID: "abc", IfName: "eth0"})
	dir := filepath.Join(dataDir, "net")
	for name, want := range map[string]string{"10.1.0.2": "abc\r\neth0", "fd00::2": "abc\r\neth0", "last_reserved_ip.0": "10.1.0.2", "last_reserved_ip.1": "fd00::2"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
		if fi, _ := os.Stat(filepath.Join(dir, name)); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", name, fi.Mode())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "lock")); err != nil {
		t.Error(err)
	}
}

// TestDiskForeignChanges edits the directory behind the store's back, as
// host-local or an operator would, and checks the index follows.
func TestDiskForeignChanges(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "net")
	s, _ := NewDiskStore(dataDir, "net")
	a := newAlloc(t, s, set("10.1.0.0/24"))
	mustAllocate(t, a, own(1)) // .2, and the index now exists

	os.WriteFile(filepath.Join(dir, "10.1.0.3"), []byte("legacy-id"), 0o600)         // very old host-local
	os.WriteFile(filepath.Join(dir, "10.1.0.4"), []byte("  other\r\neth1\n"), 0o600) // stray whitespace
	os.WriteFile(filepath.Join(dir, "10.1.0.5"), nil, 0o600)                         // torn by a crashed host-local
	os.WriteFile(filepath.Join(dir, tmpFile), []byte("c9\r\neth0"), 0o600)           // our crashed stage
	os.Remove(filepath.Join(dir, "10.1.0.2"))                                        // released by someone else

	if got := addrs(mustAllocate(t, a, own(2))); got[0] != "10.1.0.6/24" {
		t.Fatalf("allocation after foreign changes = %v, want 10.1.0.6/24", got)
	}
	if got, err := a.Lookup(ctx, Owner{ContainerID: "legacy-id", IfName: "eth0"}); err != nil || got[0].Address != mp("10.1.0.3/24") {
		t.Fatalf("legacy lookup = %v, %v", got, err)
	}
	if got, err := a.Lookup(ctx, Owner{ContainerID: "other", IfName: "eth1"}); err != nil || got[0].Address != mp("10.1.0.4/24") {
		t.Fatalf("lookup = %v, %v", got, err)
	}
	if _, err := a.Lookup(ctx, own(1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed lease still found: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, tmpFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale staging file survived: %v", err)
	}
	// A torn index is not trusted.
	idx := filepath.Join(dir, indexFile)
	b, _ := os.ReadFile(idx)
	os.WriteFile(idx, b[:len(b)-5], 0o600)
	s2, _ := NewDiskStore(dataDir, "net")
	if got := addrs(mustAllocate(t, newAlloc(t, s2, set("10.1.0.0/24")), own(3))); got[0] != "10.1.0.7/24" {
		t.Fatalf("after a torn index got %v", got)
	}
}

func TestDiskDataDirChecks(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(base, "link")
	os.Symlink(real, link)
	if _, err := NewDiskStore(link, "net"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("symlinked dataDir: %v", err)
	}
	os.Symlink(real, filepath.Join(base, "net"))
	if _, err := NewDiskStore(base, "net"); !errors.Is(err, ErrInvalid) {
		t.Errorf("symlinked network dir: %v", err)
	}
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if _, err := NewDiskStore(open, "net"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "writable") {
		t.Errorf("world-writable dataDir: %v", err)
	}
	for _, n := range []string{"", ".", "..", "a/b", ".hidden", "a\nb"} {
		if _, err := NewDiskStore(base, n); !errors.Is(err, ErrInvalid) {
			t.Errorf("network %q: %v", n, err)
		}
	}
}

func TestDiskLockContext(t *testing.T) {
	dir := t.TempDir()
	s1, _ := NewDiskStore(dir, "net")
	s2, _ := NewDiskStore(dir, "net")
	if err := s1.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s2.Lock(ctx) }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a canceled context: %v", err)
	}
	s1.Unlock()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := s2.Lock(ctx2); err != nil {
		t.Fatalf("lock after the abandoned wait: %v", err)
	}
	s2.Unlock()
}

// TestCrossProcessConcurrency runs 16 processes × 100 allocations on one
// directory.
func TestCrossProcessConcurrency(t *testing.T) {
	const procs, per = 16, 100
	dir := t.TempDir()
	var cmds []*exec.Cmd
	outs := make([]*strings.Builder, procs)
	for i := range procs {
		cmd := childCmd(t, dir, fmt.Sprintf("p%d", i), strconv.Itoa(per))
		outs[i] = new(strings.Builder)
		cmd.Stdout = outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
	}
	seen := map[string]int{}
	for i, o := range outs {
		for _, a := range strings.Fields(o.String()) {
			if prev, ok := seen[a]; ok {
				t.Fatalf("%s given to child %d and child %d", a, prev, i)
			}
			seen[a] = i
		}
	}
	if len(seen) != procs*per {
		t.Fatalf("%d addresses, want %d", len(seen), procs*per)
	}
	if l := checkStore(t, dir); len(l) != procs*per {
		t.Fatalf("store holds %d leases, want %d", len(l), procs*per)
	}
}

// TestCrashSafety kills a child that allocates and releases in a loop at
// random moments, many times, and checks the store after each kill.
func TestCrashSafety(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	kills := 40
	if testing.Short() {
		kills = 10
	}
	for k := range kills {
		cmd := childCmd(t, dir, fmt.Sprintf("k%d", k), "loop")
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait for a random amount of progress, then kill mid-flight.
		sc := bufio.NewScanner(stdout)
		for n := rng.IntN(20); n > 0 && sc.Scan(); n-- {
		}
		for spin := rng.IntN(200000); spin > 0; spin-- {
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		checkStore(t, dir)
	}
}

// TestReferenceCompatibility runs the reference host-local on the same
// directory as a DiskStore, in both directions.
func TestReferenceCompatibility(t *testing.T) {
	bin := refbin.Path(t, "host-local")
	ctx := context.Background()
	dataDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]]}}`, dataDir)
	ref := func(cmd, id string) (string, error) {
		c := exec.Command(bin)
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=/dev/null", "CNI_PATH=/nonexistent"}
		c.Stdin = strings.NewReader(conf)
		out, err := c.Output()
		return string(out), err
	}
	s, _ := NewDiskStore(dataDir, "net")
	a := newAlloc(t, s, set("10.1.0.0/24"), set("fd00::/120"))

	if out, err := ref("ADD", "ref1"); err != nil || !strings.Contains(out, "10.1.0.2/24") {
		t.Fatalf("reference ADD: %v %s", err, out)
	}
	// Ours sees the reference lease and continues its round-robin.
	if got, err := a.Lookup(ctx, Owner{ContainerID: "ref1", IfName: "eth0"}); err != nil || len(got) != 2 {
		t.Fatalf("our lookup of the reference lease = %v, %v", got, err)
	}
	if got := addrs(mustAllocate(t, a, own(1))); !slices.Equal(got, []string{"10.1.0.3/24", "fd00::3/120"}) {
		t.Fatalf("ours after the reference = %v", got)
	}
	// The reference sees ours: it continues after it, checks it, and
	// refuses a duplicate for our owner.
	if out, err := ref("ADD", "ref2"); err != nil || !strings.Contains(out, "10.1.0.4/24") {
		t.Fatalf("reference ADD after ours: %v %s", err, out)
	}
	if _, err := ref("CHECK", "c1"); err != nil {
		t.Fatalf("reference CHECK of our lease: %v", err)
	}
	if out, err := ref("ADD", "c1"); err == nil {
		t.Fatalf("reference allocated again for our owner: %s", out)
	}
	// The reference releases ours; ours releases the reference's.
	if _, err := ref("DEL", "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Lookup(ctx, own(1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lease released by the reference still found: %v", err)
	}
	if rel, err := a.Release(ctx, Owner{ContainerID: "ref2", IfName: "eth0"}); err != nil || len(rel) != 2 {
		t.Fatalf("releasing the reference's lease: %v, %v", rel, err)
	}
	if _, err := ref("CHECK", "ref2"); err == nil {
		t.Fatal("reference still finds a lease we released")
	}
	leases := checkStore(t, dataDir)
	if len(leases) != 2 || leases[0].Owner.ContainerID != "ref1" {
		t.Fatalf("leases = %v", leases)
	}
}
