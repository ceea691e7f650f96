package kubetest_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
