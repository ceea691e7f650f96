package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

type kubeClient = kubernetes.Interface

// load creates the Node node0 and n Services with one EndpointSlice
// each, 16 requests at a time.
func load(ctx context.Context, cs kubeClient, n, eps int) error {
	if err := createNode(ctx, cs); err != nil {
		return fmt.Errorf("create Node node0: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := create(ctx, cs, i, eps); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	return first
}

// createNode creates node0 with a pod CIDR and an InternalIP, as a kubelet
// registers it: kube-proxy waits, up to 30 s, for its Node to have an
// address before it starts its proxier. The address is TEST-NET-1, on no
// interface; no Service here is a NodePort.
func createNode(ctx context.Context, cs kubeClient) error {
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node0"},
		Spec: corev1.NodeSpec{PodCIDR: "10.200.0.0/24", PodCIDRs: []string{"10.200.0.0/24"}}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	// Create drops the status; it is a subresource of its own.
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.10"}, {Type: corev1.NodeHostName, Address: "node0"}}
	_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func create(ctx context.Context, cs kubeClient, i, eps int) error {
	name := fmt.Sprintf("svc-%d", i)
	_, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	_, err = cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice(name, i, 0, eps, time.Time{}), metav1.CreateOptions{})
	return err
}

// slice is Service i's EndpointSlice in generation gen: eps endpoints in
// 10.200.0.0/16 whose addresses shift by one from one generation to the
// next.
func slice(svc string, i, gen, eps int, trigger time.Time) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	if !trigger.IsZero() {
		es.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": trigger.Format(time.RFC3339Nano)}
	}
	for e := range eps {
		k := (i*eps + e + gen) % 62500
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.200.%d.%d", k/250, 2+k%250)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, NodeName: ptr("node0")})
	}
	return es
}

// change moves Service i's slice to generation gen, stamped with the time
// of the change as the EndpointSlice controller stamps it.
func change(ctx context.Context, cs kubeClient, i, gen, eps int) error {
	c := cs.DiscoveryV1().EndpointSlices("default")
	name := fmt.Sprintf("svc-%d", i)
	old, err := c.Get(ctx, name+"-1", metav1.GetOptions{})
	if err != nil {
		return err
	}
	es := slice(name, i, gen, eps, time.Now())
	es.ResourceVersion = old.ResourceVersion
	_, err = c.Update(ctx, es, metav1.UpdateOptions{})
	return err
}

func ptr[T any](v T) *T { return &v }
