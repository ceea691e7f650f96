package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/service"
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

// services converts the objects to the proxy's model: each Service with
// the endpoints of the EndpointSlices labelled with its name. Services
// without a cluster IP (headless, ExternalName) are left out: they have
// no rules.
func (o *objects) toServices() ([]service.Service, error) {
	eps := map[service.Name][]service.Endpoint{}
	for _, es := range o.slices {
		svcName := es.Labels[discoveryv1.LabelServiceName]
		if svcName == "" {
			return nil, fmt.Errorf("%s: no %s label", o.where[es], discoveryv1.LabelServiceName)
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := map[string]uint16{}
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				return nil, fmt.Errorf("%s: port %v: missing or out of range", o.where[es], deref(p.Name))
			}
			ports[deref(p.Name)] = uint16(*p.Port)
		}
		n := service.Name{Namespace: es.Namespace, Name: svcName}
		for _, e := range es.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				return nil, fmt.Errorf("%s: endpoint address %q: %w", o.where[es], e.Addresses[0], err)
			}
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := ready
			if e.Conditions.Serving != nil {
				serving = *e.Conditions.Serving
			}
			term := e.Conditions.Terminating != nil && *e.Conditions.Terminating
			eps[n] = append(eps[n], service.Endpoint{Addr: a, Ports: ports, Ready: ready, Serving: serving, Terminating: term, NodeName: deref(e.NodeName)})
		}
	}
	var out []service.Service
	for _, s := range o.services {
		if s.Spec.Type == corev1.ServiceTypeExternalName || s.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		svc, err := convert(s, eps[service.Name{Namespace: s.Namespace, Name: s.Name}])
		if err == nil {
			err = svc.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.where[s], err)
		}
		out = append(out, svc)
	}
	return out, nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func convert(s *corev1.Service, eps []service.Endpoint) (service.Service, error) {
	out := service.Service{
		Name:                  service.Name{Namespace: s.Namespace, Name: s.Name},
		Affinity:              service.Affinity(s.Spec.SessionAffinity),
		ExternalTrafficPolicy: service.TrafficPolicy(s.Spec.ExternalTrafficPolicy),
		InternalTrafficPolicy: service.TrafficPolicy(deref(s.Spec.InternalTrafficPolicy)),
		Endpoints:             eps,
	}
	if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		if *c.ClientIP.TimeoutSeconds < 0 {
			return out, errors.New("negative session affinity timeout")
		}
		out.AffinitySeconds = uint32(*c.ClientIP.TimeoutSeconds)
	}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	for _, list := range []struct {
		in   []string
		out  *[]netip.Addr
		what string
	}{{ips, &out.ClusterIPs, "cluster IP"}, {s.Spec.ExternalIPs, &out.ExternalIPs, "external IP"}} {
		for _, ip := range list.in {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				return out, fmt.Errorf("%s %q: %w", list.what, ip, err)
			}
			*list.out = append(*list.out, a)
		}
	}
	for _, p := range s.Spec.Ports {
		// Port 0 and the like are left to Validate, whose message is clearer.
		if p.Port < 0 || p.Port > 65535 || p.NodePort < 0 || p.NodePort > 65535 {
			return out, fmt.Errorf("port %q: out of range", p.Name)
		}
		port := service.Port{Name: p.Name, Protocol: service.Protocol(p.Protocol), Port: uint16(p.Port), NodePort: uint16(p.NodePort)}
		if v := p.TargetPort.IntValue(); v > 0 && v <= 65535 && p.TargetPort.StrVal == "" {
			port.TargetPort = uint16(v)
		}
		out.Ports = append(out.Ports, port)
	}
	return out, nil
}
