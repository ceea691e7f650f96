package nstest

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
)

// Main runs the tests of m and then fails the run (exit status 1) if
// anything the tests made is still on the machine: a namespace under
// /var/run/netns, a namespace mount, or a link in the test process's own
// namespace (which tests must never touch). Use it as TestMain:
//
//	func TestMain(m *testing.M) { nstest.Main(m) }
//
// Namespaces are torn down asynchronously by the kernel, so the check polls
// for a few seconds before it reports.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the exit: it returns the exit status, so a TestMain
// can remove files of its own (a built binary, say) before exiting.
func Run(m *testing.M) int {
	before := snapshot()
	code := m.Run()
	if code == 0 {
		if leaks := waitClean(before, 5*time.Second); len(leaks) > 0 {
			fmt.Fprintf(os.Stderr, "nstest: leak check: the tests left behind:\n  %s\n", strings.Join(leaks, "\n  "))
			code = 1
		}
	}
	return code
}

type state struct {
	named  []string // entries of /var/run/netns
	mounts []string // nsfs mount points
	links  []string // links of this process's namespace
}

func snapshot() state {
	var s state
	if des, err := os.ReadDir(netns.RunDir); err == nil {
		for _, de := range des {
			s.named = append(s.named, de.Name())
		}
	}
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			// mount ID, parent, major:minor, root, mount point, options, ... - fstype
			f := strings.Fields(line)
			if len(f) > 4 && slices.Contains(f, "nsfs") {
				s.mounts = append(s.mounts, f[4])
			}
		}
	}
	if self, err := netns.Current(); err == nil {
		if h, err := nl.Handle(self); err == nil {
			if links, err := nl.Dump(h.LinkList); err == nil {
				for _, l := range links {
					s.links = append(s.links, l.Attrs().Name)
				}
			}
			h.Close()
		}
		self.Close()
	}
	return s
}

func waitClean(before state, wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		leaks := diff(before, snapshot())
		if len(leaks) == 0 || time.Now().After(deadline) {
			return leaks
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func diff(before, after state) []string {
	var out []string
	added := func(kind string, b, a []string) {
		for _, x := range a {
			if !slices.Contains(b, x) {
				out = append(out, kind+" "+x)
			}
		}
	}
	added("netns", before.named, after.named)
	added("mount", before.mounts, after.mounts)
	added("link in the test process's namespace:", before.links, after.links)
	return out
}
