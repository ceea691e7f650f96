package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/policy/cnisock"
)

// Re-exported sentinels; see package podnet.
var (
	ErrInvalid  = podnet.ErrInvalid
	ErrNotFound = podnet.ErrNotFound
)

// DefaultPodWait is how long AddSandbox waits by default for a pod the
// informers have not delivered. kubelet creates a sandbox only for a
// pod it got from the API server, so the agent's informer normally has
// it already or within milliseconds.
const DefaultPodWait = 2 * time.Second

// sandbox is what a CNI ADD told: the addresses of one sandbox of a pod.
type sandbox struct {
	req  cnisock.Request
	done chan struct{} // closed once the model holds the pod with req.IPs, or err says why it cannot
	err  error
}

func (sb *sandbox) finish(err error) {
	select {
	case <-sb.done:
	default:
		sb.err = err
		close(sb.done)
	}
}

// AddSandbox records that the pod r names has r.IPs, as its CNI ADD says
// before kubelet reports them in status.podIPs, and returns once a sync
// that holds the pod with those addresses (isolating it and placing it
// among its peers by its labels) is in force. It implements
// cnisock.Handler; call it after Start.
//
// The pod must be a local pod of the informers' cache with r.UID (when
// given). It waits up to Config.PodWait for one the informers have not
// delivered, then fails with an error matching ErrNotFound: without its
// labels no rule for the pod can be right, so the ADD fails and kubelet
// retries. A pod of another node, or one that has ended, is ErrInvalid.
// When ctx ends before the sync, it fails with ctx's error. On failure
// the addresses are forgotten again.
//
// The addresses stay until DeleteSandbox for that sandbox, the pod's
// deletion, or status.podIPs reporting the same addresses (which then
// take over); until then they win over a status of an earlier sandbox.
func (s *Source) AddSandbox(ctx context.Context, r cnisock.Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.Op != cnisock.Add {
		return podnet.Invalid("AddSandbox: op %q", r.Op)
	}
	n := policy.Name{Namespace: r.Namespace, Name: r.Name}
	sb := &sandbox{req: r, done: make(chan struct{})}
	s.mu.Lock()
	if old := s.sandboxes[n]; old != nil {
		old.finish(fmt.Errorf("pod %s: superseded by sandbox %s", n, r.ContainerID))
	}
	s.sandboxes[n] = sb
	if o, err := s.pods.Pods(r.Namespace).Get(r.Name); err == nil {
		s.applyPod(o, false)
	}
	s.mu.Unlock()

	wait, cancel := context.WithTimeout(ctx, s.cfg.PodWait)
	defer cancel()
	select {
	case <-sb.done:
	case <-wait.Done():
		s.forget(sb)
		if ctx.Err() != nil {
			return fmt.Errorf("pod %s: %w", n, context.Cause(ctx))
		}
		return fmt.Errorf("pod %s (uid %q) of this node is not in the agent's informer cache after %v: %w", n, r.UID, s.cfg.PodWait, podnet.ErrNotFound)
	}
	if sb.err != nil {
		s.forget(sb)
		return sb.err
	}
	if err := s.cfg.Enforcer.WaitSynced(ctx); err != nil {
		s.forget(sb)
		return fmt.Errorf("pod %s: network policies not in force for %v: %w", n, r.IPs, err)
	}
	return nil
}

// DeleteSandbox forgets the addresses AddSandbox recorded for
// r.ContainerID; the pod keeps those status.podIPs reports. It
// implements cnisock.Handler, and does not wait for a sync: an address
// freed here is given to another pod only through that pod's own
// AddSandbox, which waits for a sync that holds both changes.
func (s *Source) DeleteSandbox(ctx context.Context, r cnisock.Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	sb := s.sandboxes[policy.Name{Namespace: r.Namespace, Name: r.Name}]
	s.mu.Unlock()
	if sb != nil && sb.req.ContainerID == r.ContainerID {
		s.forget(sb)
	}
	return nil
}

// forget drops sb, if it is still the pod's latest sandbox, and puts the
// pod back into the model as the cache has it.
func (s *Source) forget(sb *sandbox) {
	n := policy.Name{Namespace: sb.req.Namespace, Name: sb.req.Name}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandboxes[n] != sb {
		return
	}
	delete(s.sandboxes, n)
	o, err := s.pods.Pods(n.Namespace).Get(n.Name)
	switch {
	case apierrors.IsNotFound(err):
		s.cfg.Enforcer.DeletePod(n)
	case err == nil:
		s.applyPod(o, false)
	}
}

// podChanged hands a pod (deleted or not) from the informers to the
// enforcer, with the addresses of its sandbox if it has one.
func (s *Source) podChanged(o *corev1.Pod, deleted bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyPod(o, deleted)
}

// applyPod puts o into the model; s.mu must be held. A sandbox of the
// pod (of its UID) lends it its addresses while status.podIPs has
// others or none, and learns whether the pod can have them.
func (s *Source) applyPod(o *corev1.Pod, deleted bool) error {
	n := policy.Name{Namespace: o.Namespace, Name: o.Name}
	sb := s.sandboxes[n]
	if sb != nil && sb.req.UID != "" && sb.req.UID != string(o.UID) {
		sb = nil // o is an earlier incarnation; the sandbox waits for its own
	}
	e := s.cfg.Enforcer
	p, ok, err := ConvertPod(o, s.cfg.NodeName)
	switch {
	case deleted || (err == nil && !ok):
		e.DeletePod(n)
		if sb != nil {
			delete(s.sandboxes, n)
			sb.finish(podnet.Invalid("pod %s has ended or is gone", n))
		}
		return nil
	case err != nil:
		return err
	}
	if sb != nil {
		switch {
		case o.Spec.NodeName == "": // the cache's version predates the binding
			sb = nil
		case !p.Local:
			sb.finish(podnet.Invalid("pod %s runs on node %q, not on this node %q", n, o.Spec.NodeName, s.cfg.NodeName))
			sb = nil
		case sameAddrs(p.IPs, sb.req.IPs):
			delete(s.sandboxes, n) // status.podIPs takes over
		default:
			p.IPs = slices.Clone(sb.req.IPs)
		}
	}
	err = e.UpdatePod(p)
	if sb != nil {
		sb.finish(err)
	}
	return err
}

func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}
