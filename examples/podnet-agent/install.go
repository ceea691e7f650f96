package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
)

// installCNIBins copies each of the files srcs into dir under its base
// name: the init step of a DaemonSet whose image has no shell (no cp).
// Every source is checked before anything is written. A copy goes to a
// temporary file in dir, is synced and renamed over the old one, so a
// runtime executing the old binary keeps its file (a new inode replaces
// it, nothing is written into it) and one starting a plugin finds the
// old binary or the new one, never half of one. A destination that
// already holds the same bytes is left alone.
//
// Equivalent to: install -m 0755 SRC... DIR (with a rename per file)
func installCNIBins(dir string, srcs []string, log *slog.Logger) error {
	if len(srcs) == 0 {
		return errors.New("--install-cni-bin: name the binaries to install as arguments")
	}
	for _, src := range srcs {
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("--install-cni-bin: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("--install-cni-bin: %s is not a regular file", src)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("--install-cni-bin: %w", err)
	}
	for _, src := range srcs {
		dst := filepath.Join(dir, filepath.Base(src))
		if same, err := sameContent(src, dst); err != nil {
			return fmt.Errorf("--install-cni-bin: %w", err)
		} else if same {
			log.Info("CNI plugin up to date", "path", dst)
			continue
		}
		if err := replaceFile(src, dst); err != nil {
			return fmt.Errorf("--install-cni-bin: install %s as %s: %w", src, dst, err)
		}
		log.Info("CNI plugin installed", "path", dst, "from", src)
	}
	return nil
}

// replaceFile copies src to a temporary file beside dst (a dot-name a
// runtime looking for a plugin by name never finds), makes it executable,
// syncs it and renames it over dst.
func replaceFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := io.Copy(f, in); err != nil {
		return err
	}
	if err := f.Chmod(0o755); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), dst)
}

// sameContent reports whether files a and b hold the same bytes; a
// missing b is not the same.
func sameContent(a, b string) (bool, error) {
	fb, err := os.Open(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	defer fb.Close()
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	sa, err := fa.Stat()
	if err != nil {
		return false, err
	}
	sb, err := fb.Stat()
	if err != nil {
		return false, err
	}
	if sa.Size() != sb.Size() || sb.Mode().Perm() != 0o755 {
		return false, nil
	}
	bufA, bufB := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, errA := io.ReadFull(fa, bufA)
		nb, errB := io.ReadFull(fb, bufB)
		if !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			return errB == io.EOF || errB == io.ErrUnexpectedEOF, nil
		}
		if errA != nil {
			return false, errA
		}
		if errB != nil {
			return false, nil
		}
	}
}
