package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// archive is a docker-archive read back: its entries by name, in order.
type archive struct {
	names   []string
	content map[string][]byte
}

func readArchive(t *testing.T, data []byte) archive {
	t.Helper()
	a := archive{content: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return a
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		a.names = append(a.names, hdr.Name)
		a.content[hdr.Name] = b
	}
}

// layerEntry is one entry of the layer tar.
type layerEntry struct {
	hdr  tar.Header
	data string
}

func readLayer(t *testing.T, data []byte) ([]string, map[string]layerEntry) {
	t.Helper()
	var names []string
	entries := map[string]layerEntry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names, entries
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		entries[hdr.Name] = layerEntry{*hdr, string(b)}
	}
}

// source makes a tree to add: a directory with an executable, a plain
// file, a setuid file, a relative and an absolute symlink, an empty
// subdirectory, and a symlink pointing at the executable from outside.
func source(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := []struct {
		name string
		mode os.FileMode
		data string
	}{
		{"tree/bin/tool", 0o755, "#!/bin/sh\necho tool\n"},
		{"tree/etc/tool.conf", 0o600, "key=value\n"},
		{"tree/bin/suid", 0o755, "suid"},
		{"single", 0o640, "single file\n"},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tree/bin/suid"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tree/empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(dir, "tree/bin/alias")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/tool.conf", filepath.Join(dir, "tree/bin/abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tree/bin/tool", filepath.Join(dir, "link-to-tool")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// build runs mkimage with args plus --out and returns the tarball.
func build(t *testing.T, args ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := run(append(args, "--out", out)); err != nil {
		t.Fatalf("run: %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestArchive(t *testing.T) {
	src := source(t)
	args := []string{
		"--tag", "registry.example/app:1.0", "--tag", "app:latest",
		"--add", filepath.Join(src, "tree") + ":/opt/app",
		"--add", filepath.Join(src, "single") + ":/etc/",
		"--add", filepath.Join(src, "link-to-tool") + ":/usr/bin/tool", // followed
		"--symlink", "/opt/app/bin/tool:/bin/app",
		"--dir", "/tmp:1777",
		"--dir", "/var/empty",
		"--entrypoint", `["/bin/app"]`,
		"--cmd", `["serve","--port","80"]`,
		"--env", "PATH=/usr/bin:/bin", "--env", "A=b=c",
		"--workdir", "/opt/app",
		"--user", "65535:65535",
		"--expose", "80", "--expose", "53/udp",
	}
	data := build(t, args...)
	cfg, layer := checkManifest(t, readArchive(t, data), []string{"registry.example/app:1.0", "app:latest"})
	checkConfig(t, cfg, layer)
	checkLayer(t, layer)

	// Reruns are byte-identical, even after the sources' times change.
	for _, p := range []string{"tree/bin/tool", "single", "tree"} {
		if err := os.Chtimes(filepath.Join(src, p), epoch.AddDate(30, 0, 0), epoch.AddDate(30, 0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if again := build(t, args...); !bytes.Equal(data, again) {
		t.Errorf("a rerun wrote a different tarball (%s, was %s)", sha(again), sha(data))
	}
}

// checkManifest checks manifest.json against the archive's files and
// returns the config and the layer it names.
func checkManifest(t *testing.T, a archive, tags []string) (cfg, layer []byte) {
	t.Helper()
	var manifest []manifestEntry
	if err := json.Unmarshal(a.content["manifest.json"], &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 {
		t.Fatalf("manifest.json has %d images, want 1", len(manifest))
	}
	m := manifest[0]
	if !slices.Equal(m.RepoTags, tags) {
		t.Errorf("RepoTags = %q, want %q", m.RepoTags, tags)
	}
	cfg, ok := a.content[m.Config]
	if !ok {
		t.Fatalf("config %q not in the archive (entries %q)", m.Config, a.names)
	}
	if want := sha(cfg) + ".json"; m.Config != want {
		t.Errorf("config file is named %q, want its digest %q", m.Config, want)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("Layers = %q, want one", m.Layers)
	}
	layer, ok = a.content[m.Layers[0]]
	if !ok {
		t.Fatalf("layer %q not in the archive", m.Layers[0])
	}
	if want := sha(layer) + "/layer.tar"; m.Layers[0] != want {
		t.Errorf("layer file is %q, want %q", m.Layers[0], want)
	}
	return cfg, layer
}

// checkConfig checks the platform, the process and the layer's diff_id.
func checkConfig(t *testing.T, data, layer []byte) {
	t.Helper()
	var cfg struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Entrypoint, Cmd, Env []string
			WorkingDir, User     string
			ExposedPorts         map[string]struct{}
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if cfg.Architecture != "amd64" || cfg.OS != "linux" {
		t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
	}
	c := cfg.Config
	if !slices.Equal(c.Entrypoint, []string{"/bin/app"}) || !slices.Equal(c.Cmd, []string{"serve", "--port", "80"}) {
		t.Errorf("Entrypoint %q Cmd %q", c.Entrypoint, c.Cmd)
	}
	if !slices.Equal(c.Env, []string{"PATH=/usr/bin:/bin", "A=b=c"}) {
		t.Errorf("Env = %q", c.Env)
	}
	if c.WorkingDir != "/opt/app" || c.User != "65535:65535" {
		t.Errorf("WorkingDir %q User %q", c.WorkingDir, c.User)
	}
	_, tcp := c.ExposedPorts["80/tcp"]
	_, udp := c.ExposedPorts["53/udp"]
	if !tcp || !udp || len(c.ExposedPorts) != 2 {
		t.Errorf("ExposedPorts = %v, want 80/tcp and 53/udp", c.ExposedPorts)
	}
	if cfg.RootFS.Type != "layers" || !slices.Equal(cfg.RootFS.DiffIDs, []string{"sha256:" + sha(layer)}) {
		t.Errorf("rootfs = %+v, want the layer's sha256 %s", cfg.RootFS, sha(layer))
	}
}

// checkLayer checks each entry's type, mode, content, owner and time.
func checkLayer(t *testing.T, layer []byte) {
	t.Helper()
	names, entries := readLayer(t, layer)
	if !slices.IsSorted(names) {
		t.Errorf("layer entries not sorted: %q", names)
	}
	type want struct {
		typ  byte
		mode int64
		data string // content, or a symlink's target
	}
	wants := map[string]want{
		"bin/":                  {tar.TypeDir, 0o755, ""},
		"bin/app":               {tar.TypeSymlink, 0o777, "/opt/app/bin/tool"},
		"etc/":                  {tar.TypeDir, 0o755, ""},
		"etc/single":            {tar.TypeReg, 0o640, "single file\n"},
		"opt/":                  {tar.TypeDir, 0o755, ""},
		"opt/app/":              {tar.TypeDir, 0o755, ""},
		"opt/app/bin/":          {tar.TypeDir, 0o755, ""},
		"opt/app/bin/abs":       {tar.TypeSymlink, 0o777, "/etc/tool.conf"},
		"opt/app/bin/alias":     {tar.TypeSymlink, 0o777, "tool"},
		"opt/app/bin/suid":      {tar.TypeReg, 0o4755, "suid"},
		"opt/app/bin/tool":      {tar.TypeReg, 0o755, "#!/bin/sh\necho tool\n"},
		"opt/app/empty/":        {tar.TypeDir, 0o700, ""},
		"opt/app/etc/":          {tar.TypeDir, 0o755, ""},
		"opt/app/etc/tool.conf": {tar.TypeReg, 0o600, "key=value\n"},
		"tmp/":                  {tar.TypeDir, 0o1777, ""},
		"usr/":                  {tar.TypeDir, 0o755, ""},
		"usr/bin/":              {tar.TypeDir, 0o755, ""},
		"usr/bin/tool":          {tar.TypeReg, 0o755, "#!/bin/sh\necho tool\n"},
		"var/":                  {tar.TypeDir, 0o755, ""},
		"var/empty/":            {tar.TypeDir, 0o755, ""},
	}
	if len(entries) != len(wants) {
		t.Errorf("layer has %q, want %d entries", names, len(wants))
	}
	for name, w := range wants {
		e, ok := entries[name]
		if !ok {
			t.Errorf("layer lacks %s", name)
			continue
		}
		got := e.data
		if e.hdr.Typeflag == tar.TypeSymlink {
			got = e.hdr.Linkname
		}
		if e.hdr.Typeflag != w.typ || e.hdr.Mode != w.mode || got != w.data {
			t.Errorf("%s: type %c mode %#o data %q, want type %c mode %#o data %q",
				name, e.hdr.Typeflag, e.hdr.Mode, got, w.typ, w.mode, w.data)
		}
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || e.hdr.Uname != "" || e.hdr.Gname != "" || !e.hdr.ModTime.Equal(epoch) {
			t.Errorf("%s: owner %d:%d (%q:%q), mtime %v; want 0:0 and the epoch",
				name, e.hdr.Uid, e.hdr.Gid, e.hdr.Uname, e.hdr.Gname, e.hdr.ModTime)
		}
	}
}

func TestLaterInputWins(t *testing.T) {
	src := source(t)
	data := build(t, "--tag", "x:1",
		"--symlink", "nowhere:/etc/single", // replaced by the --add after it
		"--add", filepath.Join(src, "single")+":/etc/single",
		"--add", filepath.Join(src, "tree")+":/",
		"--symlink", "suid:/bin/tool", // replaces the file from the tree
		"--add", filepath.Join(src, "single")+":/bin/alias", // replaces the symlink
		"--dir", "/bin:0700", // an explicit mode for a directory already there
	)
	a := readArchive(t, data)
	var manifest []manifestEntry
	if err := json.Unmarshal(a.content["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	_, entries := readLayer(t, a.content[manifest[0].Layers[0]])
	if e := entries["bin/tool"]; e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "suid" {
		t.Errorf("bin/tool = %c %q, want the symlink to suid", e.hdr.Typeflag, e.hdr.Linkname)
	}
	if e := entries["bin/alias"]; e.hdr.Typeflag != tar.TypeReg || e.data != "single file\n" {
		t.Errorf("bin/alias = %c %q, want the file", e.hdr.Typeflag, e.data)
	}
	if e := entries["etc/single"]; e.hdr.Typeflag != tar.TypeReg {
		t.Errorf("etc/single = %c %q, want the file added after the symlink", e.hdr.Typeflag, e.hdr.Linkname)
	}
	if e := entries["bin/"]; e.hdr.Mode != 0o700 {
		t.Errorf("bin/ mode %#o, want 0700", e.hdr.Mode)
	}
	if _, ok := entries["/"]; ok {
		t.Error("the layer holds an entry for the root")
	}
}

func TestInvalidInputs(t *testing.T) {
	src := source(t)
	tree, single := filepath.Join(src, "tree"), filepath.Join(src, "single")
	for _, tc := range []struct {
		name string
		args []string
		want string // part of the error
	}{
		{"no out", []string{"--tag", "x:1"}, "--out"},
		{"no tag", []string{"--out", "/nonexistent/x.tar"}, "--tag"},
		{"entrypoint not JSON", []string{"--entrypoint", "/pause"}, "JSON array"},
		{"add without DST", []string{"--add", single}, "SRC:DST"},
		{"relative DST", []string{"--add", single + ":etc/single"}, "not absolute"},
		{"missing SRC", []string{"--add", filepath.Join(src, "nope") + ":/x"}, "no such file"},
		{"file over directory", []string{"--add", tree + ":/opt", "--add", single + ":/opt/bin"}, "both as a directory"},
		{"file as parent", []string{"--add", single + ":/x", "--symlink", "y:/x/y"}, "not a directory"},
		{"bad mode", []string{"--dir", "/tmp:999"}, "octal"},
		{"bad env", []string{"--env", "NOVALUE"}, "K=V"},
		{"bad port", []string{"--expose", "80/icmp"}, "PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !slices.Contains(args, "--tag") && tc.name != "no tag" {
				args = append(args, "--tag", "x:1")
			}
			if !slices.Contains(args, "--out") && tc.name != "no out" {
				args = append(args, "--out", filepath.Join(t.TempDir(), "x.tar"))
			}
			err := run(args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v, want an error mentioning %q", args, err, tc.want)
			}
		})
	}
}
