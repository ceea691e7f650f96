package main

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// epoch dates every entry, so a rebuild from the same inputs is identical.
var epoch = time.Unix(0, 0).UTC()

type kind int

const (
	kindDir kind = iota
	kindFile
	kindSymlink
)

// node is one entry of the layer.
type node struct {
	kind     kind
	mode     fs.FileMode // permission and setuid/setgid/sticky bits
	src      string      // kindFile: the file whose content is copied
	size     int64       // kindFile: its size when added
	target   string      // kindSymlink
	explicit bool        // kindDir: named by an input, not only a parent
}

// tree is the layer's content, keyed by clean path without the leading
// slash ("usr/bin/curl").
type tree struct {
	nodes map[string]*node
}

// imagePath turns an absolute image path into a tree key.
func imagePath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("image path %q is not absolute", p)
	}
	return strings.TrimPrefix(path.Clean(p), "/"), nil
}

// put adds n at key, making its parents; see the package doc for what
// happens when key is already taken.
func (t *tree) put(key string, n *node) error {
	if key == "" {
		if n.kind != kindDir {
			return fmt.Errorf("/ can only be a directory")
		}
		return nil // the root is implicit
	}
	if t.nodes == nil {
		t.nodes = map[string]*node{}
	}
	for dir := path.Dir(key); dir != "."; dir = path.Dir(dir) {
		switch p := t.nodes[dir]; {
		case p == nil:
			t.nodes[dir] = &node{kind: kindDir, mode: 0o755}
		case p.kind != kindDir:
			return fmt.Errorf("/%s: parent /%s is not a directory", key, dir)
		}
	}
	old := t.nodes[key]
	switch {
	case old == nil:
	case (old.kind == kindDir) != (n.kind == kindDir):
		return fmt.Errorf("/%s: added both as a directory and as a file or symlink", key)
	case n.kind == kindDir && !n.explicit:
		return nil // an implied parent keeps the mode given before
	}
	t.nodes[key] = n
	return nil
}

// addDir adds an empty directory (or sets the mode of one already there).
func (t *tree) addDir(dst string, mode fs.FileMode) error {
	key, err := imagePath(dst)
	if err != nil {
		return err
	}
	return t.put(key, &node{kind: kindDir, mode: mode, explicit: true})
}

// addSymlink adds a symlink at link pointing to target, kept verbatim.
func (t *tree) addSymlink(link, target string) error {
	key, err := imagePath(link)
	if err != nil {
		return err
	}
	return t.put(key, &node{kind: kindSymlink, mode: 0o777, target: target})
}

// addPath copies the file or directory tree src to dst.
func (t *tree) addPath(src, dst string) error {
	fi, err := os.Stat(src) // src itself is followed
	if err != nil {
		return err
	}
	if !fi.IsDir() && strings.HasSuffix(dst, "/") {
		dst += filepath.Base(src)
	}
	key, err := imagePath(dst)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return t.addEntry(key, src, fi)
	}
	if err := t.put(key, &node{kind: kindDir, mode: perm(fi.Mode()), explicit: true}); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		fi, err := d.Info() // Lstat: symlinks inside stay symlinks
		if err != nil {
			return err
		}
		return t.addEntry(path.Join(key, filepath.ToSlash(rel)), p, fi)
	})
}

// addEntry adds one file, directory or symlink found at src.
func (t *tree) addEntry(key, src string, fi fs.FileInfo) error {
	switch m := fi.Mode(); {
	case m.IsDir():
		return t.put(key, &node{kind: kindDir, mode: perm(m), explicit: true})
	case m&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return t.put(key, &node{kind: kindSymlink, mode: 0o777, target: target})
	case m.IsRegular():
		return t.put(key, &node{kind: kindFile, mode: perm(m), src: src, size: fi.Size()})
	default:
		return fmt.Errorf("%s: %v is neither a file, a directory nor a symlink", src, m.Type())
	}
}

// perm keeps the permission and setuid/setgid/sticky bits of m.
func perm(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// tarMode is m as the mode field of a tar header.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// writeLayer writes the tree as a tar stream, entries sorted by path: a
// parent sorts before its children because it is their prefix.
func (t *tree) writeLayer(w io.Writer) error {
	keys := make([]string, 0, len(t.nodes))
	for k := range t.nodes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	tw := tar.NewWriter(w)
	for _, k := range keys {
		if err := writeEntry(tw, k, t.nodes[k]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeEntry writes one node with fixed owner and time.
func writeEntry(tw *tar.Writer, key string, n *node) error {
	hdr := &tar.Header{Name: key, Mode: tarMode(n.mode), ModTime: epoch}
	switch n.kind {
	case kindDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, key+"/"
	case kindSymlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, n.target
	case kindFile:
		hdr.Typeflag, hdr.Size = tar.TypeReg, n.size
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write /%s: %w", key, err)
	}
	if n.kind != kindFile {
		return nil
	}
	f, err := os.Open(n.src)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("copy %s to /%s (did it change while being read?): %w", n.src, key, err)
	}
	return nil
}
