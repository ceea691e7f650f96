package kubetest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// TestControlPlane: the API server stores and returns objects, the
// kubeconfig file reaches it as the same admin, a stop refuses requests
// and a start on the same address serves the objects stored before.
func TestControlPlane(t *testing.T) {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubetest"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fromFile.CoreV1().Namespaces().Get(ctx, "kubetest", metav1.GetOptions{}); err != nil {
		t.Fatalf("through the kubeconfig file: %v", err)
	}
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "kubetest", metav1.GetOptions{}); err == nil {
		t.Fatal("the stopped API server answered")
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := cp.StartAPIServer(sctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server restarted in %v", time.Since(t0).Round(time.Millisecond))
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "kubetest", metav1.GetOptions{}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := cp.CompactEtcd(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStartStop: a second control plane starts beside the shared one and
// Stop removes its state directory.
func TestStartStop(t *testing.T) {
	kubetest.Shared(t) // skip or fail as the package does when it cannot start
	dir := t.TempDir()
	cp, err := kubetest.Start(context.Background(), kubetest.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 0 {
		t.Fatalf("Stop left %d entries in %s", len(des), dir)
	}
}

// TestMissingBinary: a named binary that is not there is ErrNotInstalled,
// before anything starts.
func TestMissingBinary(t *testing.T) {
	_, err := kubetest.Start(context.Background(), kubetest.Options{APIServer: "/nonexistent/kube-apiserver"})
	if err == nil || !errors.Is(err, kubetest.ErrNotInstalled) {
		t.Fatalf("err = %v, want ErrNotInstalled", err)
	}
}

const widgetCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.podnet.io
spec:
  group: test.podnet.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
`

// TestInstallCRDs: a CRD installed is served at once (an object of it
// can be made), and gone after remove; a file that is not a CRD is
// refused and leaves no CRD of the call behind.
func TestInstallCRDs(t *testing.T) {
	cp := kubetest.Shared(t)
	ctx := context.Background()
	dir := t.TempDir()
	crdFile, notCRD := filepath.Join(dir, "widget.yaml"), filepath.Join(dir, "ns.yaml")
	if err := os.WriteFile(crdFile, []byte(widgetCRD), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notCRD, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	crds := dc.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err := cp.InstallCRDs(ctx, crdFile, notCRD); err == nil || !strings.Contains(err.Error(), "not a CustomResourceDefinition") {
		t.Fatalf("a Namespace file: %v", err)
	}
	if crd, err := crds.Get(ctx, "widgets.test.podnet.io", metav1.GetOptions{}); err == nil && crd.GetDeletionTimestamp() == nil {
		t.Error("the CRD made before the bad file was left")
	}
	// The CRD the failed call deleted may still be terminating.
	var remove func()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if remove, err = cp.InstallCRDs(ctx, crdFile); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	if err != nil {
		t.Fatal(err)
	}
	widgets := dc.Resource(schema.GroupVersionResource{Group: "test.podnet.io", Version: "v1", Resource: "widgets"}).Namespace("default")
	w := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "test.podnet.io/v1", "kind": "Widget",
		"metadata": map[string]any{"name": "w"}, "spec": map[string]any{"size": int64(3)}}}
	if _, err := widgets.Create(ctx, w, metav1.CreateOptions{}); err != nil {
		t.Fatalf("an object of the installed CRD: %v", err)
	}
	remove()
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, err := crds.Get(ctx, "widgets.test.podnet.io", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRD is still there after remove: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}
