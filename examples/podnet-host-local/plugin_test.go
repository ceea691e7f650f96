package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/podnet/podnet/internal/testenv/refbin"
)

var plugin string // path of the built podnet-host-local

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "podnet-host-local-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	plugin = filepath.Join(dir, "podnet-host-local")
	if out, err := exec.Command("go", "build", "-o", plugin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func conf(dataDir, extra string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net","ipam":{"type":"podnet-host-local","dataDir":%q,
		"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]],"routes":[{"dst":"0.0.0.0/0"}]}%s}`, dataDir, extra)
}

type result struct {
	IPs []struct {
		Address string `json:"address"`
		Gateway string `json:"gateway"`
	} `json:"ips"`
	Routes []struct {
		Dst string `json:"dst"`
	} `json:"routes"`
	Code uint   `json:"code"`
	Msg  string `json:"msg"`
}

func call(t *testing.T, bin, cmd, id, stdin string, env ...string) (result, error) {
	t.Helper()
	c := exec.Command(bin)
	c.Env = append([]string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=/dev/null", "CNI_PATH=/nonexistent"}, env...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.Output()
	var r result
	if len(out) > 0 {
		if jerr := json.Unmarshal(out, &r); jerr != nil && cmd != "VERSION" {
			t.Fatalf("%s output %q: %v", cmd, out, jerr)
		}
	}
	return r, err
}

func TestVerbs(t *testing.T) {
	d := t.TempDir()
	c := conf(d, "")
	r1, err := call(t, plugin, "ADD", "c1", c)
	if err != nil || len(r1.IPs) != 2 || r1.IPs[0].Address != "10.1.0.2/24" || r1.IPs[1].Gateway != "fd00::1" || r1.Routes[0].Dst != "0.0.0.0/0" {
		t.Fatalf("ADD = %+v, %v", r1, err)
	}
	r2, err := call(t, plugin, "ADD", "c1", c)
	if err != nil || r2.IPs[0].Address != r1.IPs[0].Address {
		t.Fatalf("repeated ADD = %+v, %v", r2, err)
	}
	if r, err := call(t, plugin, "ADD", "c2", c, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.0.77"); err != nil || r.IPs[0].Address != "10.1.0.77/24" {
		t.Fatalf("ADD with IP= = %+v, %v", r, err)
	}
	if r, err := call(t, plugin, "ADD", "c3", conf(d, `,"runtimeConfig":{"ips":["fd00::77/120"]}`)); err != nil || r.IPs[1].Address != "fd00::77/120" {
		t.Fatalf("ADD with the ips capability = %+v, %v", r, err)
	}
	if _, err := call(t, plugin, "CHECK", "c1", c); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if _, err := call(t, plugin, "CHECK", "nobody", c); err == nil {
		t.Fatal("CHECK of an unknown container succeeded")
	}
	if _, err := call(t, plugin, "STATUS", "", c); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	gc := conf(d, `,"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c3","ifname":"eth0"}]`)
	if _, err := call(t, plugin, "GC", "", gc); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d, "net", "10.1.0.77")); !os.IsNotExist(err) {
		t.Fatalf("GC kept c2's lease: %v", err)
	}
	for _, id := range []string{"c1", "c1", "c3"} {
		if _, err := call(t, plugin, "DEL", id, c); err != nil {
			t.Fatalf("DEL %s: %v", id, err)
		}
	}
	names, _ := filepath.Glob(filepath.Join(d, "net", "[0-9f]*"))
	if len(names) != 0 {
		t.Fatalf("leases left after DEL: %v", names)
	}
	c2 := exec.Command(plugin)
	c2.Env = []string{"CNI_COMMAND=VERSION"}
	c2.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if out, err := c2.Output(); err != nil || !strings.Contains(string(out), "1.1.0") {
		t.Fatalf("VERSION = %s, %v", out, err)
	}
}

func TestErrorCodes(t *testing.T) {
	d := t.TempDir()
	tests := []struct {
		name, stdin, id string
		code            uint
	}{
		{"not JSON", `{`, "c1", 6},
		{"host bits", strings.Replace(conf(d, ""), "10.1.0.0/24", "10.1.0.1/24", 1), "c1", 7},
		{"no ranges", fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net","ipam":{"type":"x","dataDir":%q}}`, d), "c1", 7},
		{"bad network name", strings.Replace(conf(d, ""), `"name":"net"`, `"name":"../x"`, 1), "c1", 7},
		{"bad container ID", conf(d, ""), "a/b", 4}, // rejected by skel before us
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := call(t, plugin, "ADD", tt.id, tt.stdin)
			if err == nil || r.Code != tt.code {
				t.Fatalf("ADD = %+v, %v; want code %d", r, err, tt.code)
			}
		})
	}
}

// TestReferenceBothWays alternates the reference host-local and ours on
// one dataDir.
func TestReferenceBothWays(t *testing.T) {
	ref := refbin.Path(t, "host-local")
	d := t.TempDir()
	c := strings.Replace(conf(d, ""), "1.1.0", "1.0.0", 1)
	seen := map[string]string{}
	for i := range 6 {
		bin, who := plugin, "podnet"
		if i%2 == 0 {
			bin, who = ref, "reference"
		}
		id := fmt.Sprintf("c%d", i)
		r, err := call(t, bin, "ADD", id, c)
		if err != nil || len(r.IPs) != 2 {
			t.Fatalf("%s ADD %s: %+v %v", who, id, r, err)
		}
		for _, ip := range r.IPs {
			if prev, ok := seen[ip.Address]; ok {
				t.Fatalf("%s given to %s and %s", ip.Address, prev, id)
			}
			seen[ip.Address] = id
		}
	}
	// Each DELs and CHECKs the other's leases.
	if _, err := call(t, ref, "CHECK", "c1", c); err != nil {
		t.Fatalf("reference CHECK of ours: %v", err)
	}
	if _, err := call(t, plugin, "CHECK", "c0", c); err != nil {
		t.Fatalf("our CHECK of the reference's: %v", err)
	}
	if r, err := call(t, plugin, "ADD", "c0", c); err != nil || seen[r.IPs[0].Address] != "c0" {
		t.Fatalf("our repeated ADD of a reference lease = %+v, %v", r, err)
	}
	for i := range 6 {
		bin := ref
		if i%2 == 0 {
			bin = plugin
		}
		if _, err := call(t, bin, "DEL", fmt.Sprintf("c%d", i), c); err != nil {
			t.Fatal(err)
		}
	}
	if names, _ := filepath.Glob(filepath.Join(d, "net", "[0-9f]*")); len(names) != 0 {
		t.Fatalf("leases left: %v", names)
	}
}

// TestConcurrentProcesses runs 16 plugin processes × 10 ADDs at once.
func TestConcurrentProcesses(t *testing.T) {
	d := t.TempDir()
	c := conf(d, "")
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for p := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				r, err := call(t, plugin, "ADD", fmt.Sprintf("p%d-%d", p, i), c)
				if err != nil {
					errs <- fmt.Errorf("ADD: %+v %v", r, err)
					return
				}
				mu.Lock()
				for _, ip := range r.IPs {
					if seen[ip.Address] {
						errs <- fmt.Errorf("%s given twice", ip.Address)
					}
					seen[ip.Address] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != 320 {
		t.Fatalf("%d addresses, want 320", len(seen))
	}
}
