package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/cni"
	"github.com/podnet/podnet/policy/cnisock"
)

// The bounds of the plugin's wait for the NetworkPolicy agent. ADD's is
// above the agent's own (cnisock.DefaultRequestTimeout), so that the
// agent's refusal, which says why, arrives first; DEL's is short, as
// the agent also forgets the addresses when the pod is deleted.
const (
	policyAddTimeout = 10 * time.Second
	policyDelTimeout = 2 * time.Second
)

// maxSocketPath is the longest unix socket path (sun_path less its NUL).
const maxSocketPath = 107

func validatePolicySocket(path string) error {
	if path != "" && (!filepath.IsAbs(path) || len(path) > maxSocketPath) {
		return configError(types.ErrInvalidNetworkConfig, "policySocket %q: want an absolute path of at most %d bytes", path, maxSocketPath)
	}
	return nil
}

// podOf returns the pod CNI_ARGS names, as Kubernetes runtimes pass it:
// K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID (the latter since
// Kubernetes 1.21's runtimes; "" when absent).
func podOf(cniArgs string) (namespace, name, uid string) {
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			namespace = v
		case "K8S_POD_NAME":
			name = v
		case "K8S_POD_UID":
			uid = v
		}
	}
	return namespace, name, uid
}

// policyRequest is the request for this attachment's pod; ok is false
// when the configuration names no policy socket or CNI_ARGS no pod (a
// container that is no pod: no NetworkPolicy applies to it).
func policyRequest(n *netConf, containerID, cniArgs string, op cnisock.Op) (cnisock.Request, bool) {
	ns, name, uid := podOf(cniArgs)
	if n.PolicySocket == "" || ns == "" || name == "" {
		return cnisock.Request{}, false
	}
	return cnisock.Request{Version: cnisock.Version, Op: op, ContainerID: containerID, Namespace: ns, Name: name, UID: uid}, true
}

// tellPolicy hands the pod's addresses to the NetworkPolicy agent and
// waits until its policies are in force, so that ADD returns with the
// pod isolated and known to its peers' rules. An agent that does not
// answer, or cannot put them in force, fails the ADD with "try again
// later" (kubelet retries): returning would let the pod run unisolated.
func (a *addition) tellPolicy() error {
	req, ok := policyRequest(a.n, a.args.ContainerID, a.args.Args, cnisock.Add)
	if !ok {
		return nil
	}
	for _, ipc := range a.result.IPs {
		req.IPs = append(req.IPs, cni.Prefix(ipc.Address).Addr())
	}
	ctx, cancel := context.WithTimeout(a.ctx, policyAddTimeout)
	defer cancel()
	err := cnisock.Send(ctx, a.n.PolicySocket, req)
	if err != nil {
		return policyError(req, a.n.PolicySocket, err)
	}
	a.cleanup.push(func() { forgetPolicy(a.n, a.args.ContainerID, a.args.Args) })
	return nil
}

func policyError(req cnisock.Request, path string, err error) error {
	pod := req.Namespace + "/" + req.Name
	var msg string
	switch {
	case errors.Is(err, cnisock.ErrUnavailable):
		msg = fmt.Sprintf("no NetworkPolicy agent answers on %s (podnet-agent must run on the node for pods to start)", path)
	case errors.Is(err, cnisock.ErrNotFound):
		msg = fmt.Sprintf("the NetworkPolicy agent does not know pod %s yet", pod)
	case errors.Is(err, context.DeadlineExceeded):
		msg = fmt.Sprintf("the NetworkPolicy agent did not put pod %s's policies in force in time", pod)
	default:
		msg = fmt.Sprintf("the NetworkPolicy agent refused pod %s", pod)
	}
	return types.NewError(types.ErrTryAgainLater, msg+"; the pod must not run unisolated", err.Error())
}

// forgetPolicy tells the agent the sandbox is gone, best effort: the
// agent also forgets its addresses when the pod is deleted.
func forgetPolicy(n *netConf, containerID, cniArgs string) {
	req, ok := policyRequest(n, containerID, cniArgs, cnisock.Del)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), policyDelTimeout)
	defer cancel()
	cnisock.Send(ctx, n.PolicySocket, req)
}
