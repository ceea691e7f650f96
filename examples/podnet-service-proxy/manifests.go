package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/service/kube"
)

// manifestFiles returns the manifest files at path: the file itself, or
// the *.yaml, *.yml and *.json files under a directory, sorted.
func manifestFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml", ".json":
			if !d.IsDir() {
				files = append(files, p)
			}
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}

// fingerprint summarises the manifest files' names, sizes and times.
func fingerprint(path string) (string, error) {
	files, err := manifestFiles(path)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

// objects is what the manifests hold.
type objects struct {
	services []*corev1.Service
	slices   []*discoveryv1.EndpointSlice
	where    map[any]string // object → "file: Kind ns/name"
}

// readManifests reads every Service and EndpointSlice at path (a v1 List
// is unpacked; other kinds are skipped). An error names the file, the
// document and the object.
func readManifests(path string) (*objects, error) {
	files, err := manifestFiles(path)
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	o := &objects{where: map[any]string{}}
	for _, f := range files {
		if err := o.addFile(f); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// addFile adds the objects of each document in file. JSON goes through
// the YAML reader too: no JSON line can start with "---", so a JSON file
// is one document.
func (o *objects) addFile(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	for doc := 1; ; doc++ {
		data, err := r.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", file, doc, err)
		}
		// A document of only comments decodes to an empty header, which
		// add skips like any kind it does not know.
		if err := o.add(file, doc, data); err != nil {
			return err
		}
	}
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Items []json `json:"items"`
}

type json = map[string]any

func (o *objects) add(file string, doc int, data []byte) error {
	var h header
	if err := yaml.Unmarshal(data, &h); err != nil {
		return fmt.Errorf("%s: document %d: %w", file, doc, err)
	}
	ns := h.Metadata.Namespace
	if ns == "" {
		ns = "default"
	}
	where := fmt.Sprintf("%s: document %d: %s %s/%s", file, doc, h.Kind, ns, h.Metadata.Name)
	switch {
	case h.Kind == "List" || strings.HasSuffix(h.Kind, "List") && h.APIVersion == "v1":
		for j, item := range h.Items {
			b, err := yaml.Marshal(item)
			if err != nil {
				return fmt.Errorf("%s: item %d: %w", where, j, err)
			}
			if err := o.add(file, doc, b); err != nil {
				return err
			}
		}
	case h.APIVersion == "v1" && h.Kind == "Service":
		var s corev1.Service
		if err := yaml.UnmarshalStrict(data, &s); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if s.Namespace == "" {
			s.Namespace = "default"
		}
		o.services = append(o.services, &s)
		o.where[&s] = where
	case h.APIVersion == "discovery.k8s.io/v1" && h.Kind == "EndpointSlice":
		var es discoveryv1.EndpointSlice
		if err := yaml.UnmarshalStrict(data, &es); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if es.Namespace == "" {
			es.Namespace = "default"
		}
		o.slices = append(o.slices, &es)
		o.where[&es] = where
	}
	return nil
}

// toServices converts the objects to the proxy's model, as the API source
// does (kube.Convert), keeping the addresses of families: each Service
// with the endpoints of the EndpointSlices labelled with its name.
// Services that get no rules (headless, ExternalName, another family) are
// left out.
func (o *objects) toServices(families []podnet.Family) ([]service.Service, error) {
	bySvc := map[service.Name][]*discoveryv1.EndpointSlice{}
	for _, es := range o.slices {
		svcName := es.Labels[discoveryv1.LabelServiceName]
		if svcName == "" {
			return nil, fmt.Errorf("%s: no %s label", o.where[es], discoveryv1.LabelServiceName)
		}
		n := service.Name{Namespace: es.Namespace, Name: svcName}
		bySvc[n] = append(bySvc[n], es)
	}
	var out []service.Service
	for _, s := range o.services {
		svc, ok, err := kube.Convert(s, bySvc[service.Name{Namespace: s.Namespace, Name: s.Name}], families)
		if err == nil && ok {
			err = svc.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.where[s], err)
		}
		if ok {
			out = append(out, svc)
		}
	}
	return out, nil
}
