package kubetest

import (
	"context"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates the CustomResourceDefinitions of the YAML files
// (one object each) and waits until the API server reports every one
// Established, so that their resources are served. It returns a func that
// deletes them. A file that is not a CRD, or a CRD the API server
// refuses, is an error; the CRDs made before it are deleted.
func (cp *ControlPlane) InstallCRDs(ctx context.Context, files ...string) (_ func(), err error) {
	dc, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		return nil, err
	}
	crds := dc.Resource(crdResource)
	var names []string
	remove := func() {
		for _, n := range names {
			crds.Delete(context.Background(), n, metav1.DeleteOptions{})
		}
	}
	defer func() {
		if err != nil {
			remove()
		}
	}()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		var crd unstructured.Unstructured
		if err := crd.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if crd.GetKind() != "CustomResourceDefinition" {
			return nil, fmt.Errorf("%s: a %s, not a CustomResourceDefinition", f, crd.GetKind())
		}
		if _, err := crds.Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		names = append(names, crd.GetName())
	}
	for _, n := range names {
		for {
			obj, err := crds.Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			if established(obj) {
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("CRD %s not Established: %w", n, ctx.Err())
			case <-time.After(20 * time.Millisecond): // polling interval
			}
		}
	}
	return remove, nil
}

// established reports whether a CRD's status has condition Established
// True.
func established(obj *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
