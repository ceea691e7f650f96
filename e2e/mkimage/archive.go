package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// image is what the archive describes besides the layer.
type image struct {
	Tags   []string
	Config containerConfig
}

// containerConfig is the "config" object of the image config, with the
// fields Docker and containerd read for a container's process.
type containerConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
}

// imageConfig is the image config (the OCI image spec's, which Docker's
// is a superset of). It carries no creation time, for reproducibility.
type imageConfig struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	CreatedBy string `json:"created_by"`
}

// manifestEntry is one image of a docker-archive's manifest.json.
type manifestEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// writeArchive writes img with the layer t to out: the layer first goes
// to a temporary file beside out (its digest names it in the archive and
// must be known before the archive entry is written), then out is written
// to a temporary name and renamed, so a failed run leaves no half tarball.
func writeArchive(out string, img image, t *tree) error {
	dir := filepath.Dir(out)
	layer, err := os.CreateTemp(dir, ".mkimage-layer-*")
	if err != nil {
		return err
	}
	defer func() {
		layer.Close()
		os.Remove(layer.Name())
	}()
	diffID, size, err := writeLayerFile(layer, t)
	if err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	cfg, manifest, err := describe(img, diffID)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".mkimage-out-*")
	if err != nil {
		return err
	}
	if err := writeTar(tmp, diffID, layer, size, cfg, manifest); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), out)
}

// writeLayerFile writes the layer to f and returns its digest (hex) and
// size, leaving f at its start.
func writeLayerFile(f *os.File, t *tree) (diffID string, size int64, err error) {
	h := sha256.New()
	if err := t.writeLayer(io.MultiWriter(f, h)); err != nil {
		return "", 0, err
	}
	if size, err = f.Seek(0, io.SeekCurrent); err != nil {
		return "", 0, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// describe returns the image config and the manifest.json naming it and
// the layer.
func describe(img image, diffID string) (cfg []byte, manifest []byte, err error) {
	cfg, err = json.Marshal(imageConfig{
		Architecture: "amd64",
		OS:           "linux",
		Config:       img.Config,
		RootFS:       rootFS{Type: "layers", DiffIDs: []string{"sha256:" + diffID}},
		History:      []history{{CreatedBy: "podnet e2e/mkimage"}},
	})
	if err != nil {
		return nil, nil, err
	}
	manifest, err = json.Marshal([]manifestEntry{{
		Config:   configName(cfg),
		RepoTags: img.Tags,
		Layers:   []string{layerName(diffID)},
	}})
	return cfg, manifest, err
}

// configName is the archive's name for the config: its digest.
func configName(cfg []byte) string {
	sum := sha256.Sum256(cfg)
	return hex.EncodeToString(sum[:]) + ".json"
}

// layerName is the archive's name for the layer, in a directory named
// after its digest as `docker save` does.
func layerName(diffID string) string { return diffID + "/layer.tar" }

// writeTar writes the archive to f and closes it: the layer's
// directory and file, the config, manifest.json.
func writeTar(f *os.File, diffID string, layer io.Reader, size int64, cfg, manifest []byte) error {
	tw := tar.NewWriter(f)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: diffID + "/", Mode: 0o755, ModTime: epoch}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: layerName(diffID), Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, layer); err != nil {
		return err
	}
	for _, e := range []struct {
		name string
		data []byte
	}{{configName(cfg), cfg}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	return f.Close()
}
