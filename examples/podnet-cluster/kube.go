package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/service/kube"
)

// The API objects the demo writes: it plays the kubelet (Node
// registration), the node IPAM controller (spec.podCIDRs) and the
// EndpointSlice controller (one slice per Service, endpoints with their
// node, the trigger-time annotation of each change).

// managedBy marks the EndpointSlices as the demo's, as the EndpointSlice
// controller marks its own, so that controller would leave them alone.
const managedBy = "podnet-cluster"

// nodeObject is worker w as the kubelet registers it, with the pod CIDR the
// node IPAM controller would give it, and NetworkUnavailable=True until
// the node's network agent says otherwise (as a cloud's route controller
// starts it).
func nodeObject(w *worker) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: w.name, Labels: map[string]string{
			"kubernetes.io/hostname": w.name,
			"kubernetes.io/os":       "linux",
		}},
		Spec: corev1.NodeSpec{PodCIDR: w.podCIDR.String(), PodCIDRs: []string{w.podCIDR.String()}},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: w.ip.String()},
				{Type: corev1.NodeHostName, Address: w.name},
			},
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue,
				Reason: "NoRouteCreated", Message: "registered by podnet-cluster; waiting for the node's network agent",
				LastTransitionTime: metav1.Now(), LastHeartbeatTime: metav1.Now(),
			}},
		},
	}
}

// registerNode creates w's Node. The status is written again through the
// status subresource when the create dropped it.
func registerNode(ctx context.Context, cs kubernetes.Interface, w *worker) error {
	want := nodeObject(w)
	n, err := cs.CoreV1().Nodes().Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Node %s: %w", w.name, err)
	}
	if len(n.Status.Addresses) == 0 {
		n.Status = want.Status
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("set the status of Node %s: %w", w.name, err)
		}
	}
	return nil
}

// networkReady returns the Node's NetworkUnavailable condition when it is
// False: the node's agent has set up its network.
func networkReady(ctx context.Context, cs kubernetes.Interface, name string) (*corev1.NodeCondition, error) {
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse {
			return &n.Status.Conditions[i], nil
		}
	}
	return nil, nil
}

// kubeService is the v1 Service of s, with its fixed cluster IP.
func kubeService(s service.Service) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name.Name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP},
	}
	for _, ip := range s.ClusterIPs {
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, ip.String())
	}
	if len(svc.Spec.ClusterIPs) > 0 {
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	}
	for _, p := range s.Ports {
		target := p.TargetPort
		if target == 0 {
			target = p.Port
		}
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: p.Name, Protocol: corev1.Protocol(protocolOf(p)), Port: int32(p.Port),
			TargetPort: intstr.FromInt32(int32(target)), NodePort: int32(p.NodePort),
		})
		if p.NodePort != 0 {
			svc.Spec.Type = corev1.ServiceTypeNodePort
		}
	}
	return svc
}

func protocolOf(p service.Port) service.Protocol {
	if p.Protocol == "" {
		return service.TCP
	}
	return p.Protocol
}

// sliceName is the one EndpointSlice the demo keeps per Service.
func sliceName(s service.Service) string { return s.Name.Name + "-podnet" }

// kubeSlice is the EndpointSlice of s's endpoints, stamped with the time of
// the change that made it.
func kubeSlice(s service.Service, at time.Time) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: s.Namespace, Name: sliceName(s),
			Labels: map[string]string{
				discoveryv1.LabelServiceName: s.Name.Name,
				discoveryv1.LabelManagedBy:   managedBy,
			},
			Annotations: map[string]string{kube.TriggerTimeAnnotation: at.Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range s.Ports {
		target := int32(p.TargetPort)
		if target == 0 {
			target = int32(p.Port)
		}
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(p.Name), Protocol: ptr(corev1.Protocol(protocolOf(p))), Port: ptr(target)})
	}
	for _, e := range s.Endpoints {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{e.Addr.String()},
			NodeName:  ptr(e.NodeName),
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr(e.Ready), Serving: ptr(e.Serving), Terminating: ptr(e.Terminating),
			},
		})
	}
	return es
}

func ptr[T any](v T) *T { return &v }

// createService creates s's Service (and its namespace if missing).
func createService(ctx context.Context, cs kubernetes.Interface, s service.Service) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.Namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", s.Namespace, err)
	}
	if _, err := cs.CoreV1().Services(s.Namespace).Create(ctx, kubeService(s), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s: %w", s.Name, err)
	}
	return nil
}

// writeEndpoints creates or replaces s's EndpointSlice with s.Endpoints and
// returns the change's trigger time, taken just before the write.
func writeEndpoints(ctx context.Context, cs kubernetes.Interface, s service.Service) (time.Time, error) {
	c := cs.DiscoveryV1().EndpointSlices(s.Namespace)
	old, err := c.Get(ctx, sliceName(s), metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return time.Time{}, err
	}
	at := time.Now()
	es := kubeSlice(s, at)
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = c.Update(ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = c.Create(ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("write the EndpointSlice of %s: %w", s.Name, err)
	}
	return at, nil
}
