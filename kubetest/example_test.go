package kubetest_test

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/kubetest"
)

// A control plane of one's own, outside a test binary: start it, use it
// through the admin clientset (or cp.Kubeconfig for another process), stop
// it. In tests, kubetest.Shared(t) with kubetest.Main as TestMain starts one
// per package instead.
func ExampleStart() {
	ctx := context.Background()
	cp, err := kubetest.Start(ctx, kubetest.Options{ServiceClusterIPRange: "10.96.0.0/16"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cp.Stop()
	cs, err := cp.Client()
	if err != nil {
		fmt.Println(err)
		return
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node0"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.200.0.0/24"}}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		fmt.Println(err)
	}
}
