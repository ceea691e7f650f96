package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

// stepTimeout bounds each step of a program's job: long enough for a
// loaded machine, short enough that a program stuck without a verb
// fails in reasonable time.
const stepTimeout = 30 * time.Second

// TestRBAC runs each DaemonSet's program with its ServiceAccount's token
// against a real API server. With the manifest's ClusterRole the program
// must do its whole job, be refused nothing, and use every verb it is
// granted; without any one verb it must fail — Forbidden on exactly that
// verb, or its job not done within the deadline — so a verb it needs and
// lacks fails here, and so does a verb it never needs.
func TestRBAC(t *testing.T) {
	nstest.Require(t)
	m := mustLoad(t)
	h := newHarness(t, m)
	for _, name := range keys(m.daemonSets) {
		ds := m.daemonSets[name]
		job := jobs[name]
		if job == nil {
			t.Errorf("DaemonSet %s: no job defined for its program", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			sa, binding, role, err := m.roleOf(ds)
			if err != nil {
				t.Fatal(err)
			}
			for _, variant := range job.variants {
				t.Run("all-verbs"+variant.name, func(t *testing.T) {
					r := h.start(t, ds, job, sa, binding, role.Rules, variant.config)
					if err := job.do(r); err != nil {
						t.Fatalf("%v\nprogram log:\n%s", err, r.log.String())
					}
					r.checkCaps()
					var granted []string
					for _, p := range permissions(role.Rules) {
						granted = append(granted, p.String())
					}
					slices.Sort(granted)
					if used := r.rec.used(); !slices.Equal(used, granted) {
						t.Errorf("the program used %q, the role grants %q: a verb granted but not used is not least privilege", used, granted)
					}
					t.Logf("used %q in %v", r.rec.used(), r.rec.requests())
				})
			}
			for _, p := range permissions(role.Rules) {
				t.Run("without-"+strings.ReplaceAll(p.Verb+"-"+p.Resource, "/", "-"), func(t *testing.T) {
					r := h.start(t, ds, job, sa, binding, without(role.Rules, p), nil)
					err := job.do(r)
					if err == nil {
						t.Fatalf("the program did its whole job without %s: drop the verb from the ClusterRole", p)
					}
					var fe *forbiddenError
					switch {
					case errors.As(err, &fe):
						for _, q := range fe.requests {
							if q.key() != p.String() {
								t.Errorf("Forbidden on %s (%s), but only %s was removed", q.key(), q, p)
							}
						}
					case errors.Is(err, errNotDone):
						t.Logf("no Forbidden, but the job was not done: %v", err)
					default:
						t.Fatalf("without %s the program failed otherwise than by RBAC: %v\n%s", p, err, r.log.String())
					}
					t.Logf("without %s: %v", p, err)
				})
			}
		})
	}
}

// job is what a program must get done on a node: prepare sets up the node
// and the API objects before it starts; do checks its work step by step.
type job struct {
	prepare func(r *run)
	// args are the test's overrides of the container's flags, for host
	// paths the test cannot give the process (appended: the last wins).
	args     func(r *run) []string
	do       func(r *run) error
	variants []variant
}

// variant is a full run with some ConfigMap values changed.
type variant struct {
	name   string
	config map[string]string
}

var jobs = map[string]*job{
	"podnet-agent":         agentJob,
	"podnet-service-proxy": proxyJob,
}

// harness starts programs as a runtime would on nodes of the shared
// control plane.
type harness struct {
	t      *testing.T
	m      *manifests
	cp     *kubetest.ControlPlane
	cs     kubernetes.Interface
	runs   atomic.Int32
	svcEnv map[string]string // what kubelet sets from the kubernetes Service
}

func newHarness(t *testing.T, m *manifests) *harness {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	must(t, err)
	h := &harness{t: t, m: m, cp: cp, cs: cs}
	installAdminCRDs(t, cp)
	ctx := context.Background()
	var svc *corev1.Service
	poll(t, time.Minute, "namespace kube-system and the kubernetes Service", func() (bool, string) {
		if _, err := cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{}); err != nil {
			return false, err.Error()
		}
		svc, err = cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})
	port := strconv.Itoa(int(svc.Spec.Ports[0].Port))
	h.svcEnv = map[string]string{"KUBERNETES_SERVICE_HOST": svc.Spec.ClusterIP, "KUBERNETES_SERVICE_PORT": port,
		"KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": "tcp://" + net.JoinHostPort(svc.Spec.ClusterIP, port)}
	return h
}

// run is one program running on one node.
type run struct {
	t    *testing.T
	h    *harness
	cs   kubernetes.Interface
	id   int
	node string
	ns   *netns.NS // the node's network namespace (10.99.0.1 on eth0)
	peer *netns.NS // its neighbour on eth0 (10.99.0.2)
	pod  *netns.NS // the agent job's pod (policyPod)
	dir  string    // the test's stand-in for host paths
	rec  *apiRecorder
	c    corev1.Container
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	spec containerSpec
	// config is the ConfigMap the container's environment came from.
	config map[string]string
	clean  []func()
}

// start runs the DaemonSet's container on a new node as ServiceAccount sa
// bound to a ClusterRole with rules, with the ConfigMap's values
// overridden by config (and by the API server's address, as an
// installer fills it in).
func (h *harness) start(t *testing.T, ds *appsv1.DaemonSet, j *job, sa *corev1.ServiceAccount, binding *rbacv1.ClusterRoleBinding, rules []rbacv1.PolicyRule, config map[string]string) *run {
	id := int(h.runs.Add(1))
	pair := nstest.NewPair(t)
	r := &run{t: t, h: h, cs: h.cs, id: id, node: fmt.Sprintf("deploy-node-%d", id), ns: pair.A, peer: pair.B,
		dir: t.TempDir(), c: ds.Spec.Template.Spec.Containers[0], log: &syncBuffer{}, done: make(chan struct{})}
	t.Cleanup(func() {
		for _, f := range slices.Backward(r.clean) {
			f()
		}
	})
	token := h.grant(r, sa, binding, rules)
	r.rec = newRecorder(t, r.ns, h.cp.Config)
	j.prepare(r)

	configMaps := map[string]map[string]string{}
	for name, cm := range h.m.configMaps {
		configMaps[name] = maps.Clone(cm.Data)
	}
	for k, v := range config {
		configMaps[ConfigName][k] = v
	}
	configMaps[ConfigName]["kubernetes-service-host"] = r.rec.addr.Addr().String()
	configMaps[ConfigName]["kubernetes-service-port"] = strconv.Itoa(int(r.rec.addr.Port()))
	r.config = configMaps[ConfigName]
	env, envList, err := podEnv(r.c, r.node, h.svcEnv, configMaps)
	must(t, err)
	argv := []string{}
	for _, a := range slices.Concat(r.c.Command, r.c.Args) {
		argv = append(argv, expand(a, env))
	}
	if j.args != nil {
		argv = append(argv, j.args(r)...)
	}
	r.spec = containerSpec{
		Path: filepath.Join(binDir, filepath.Base(r.c.Command[0])), Argv: argv, Env: envList,
		Secrets: map[string][]byte{"token": []byte(token), "ca.crt": r.rec.caPEM, "namespace": []byte(Namespace)},
	}
	sc := r.c.SecurityContext
	r.spec.Privileged = sc != nil && sc.Privileged != nil && *sc.Privileged
	r.spec.NoNewPrivs = sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	if !r.spec.Privileged {
		r.spec.Caps, err = containerCaps(sc)
		must(t, err)
	}
	r.startProcess()
	return r
}

// grant creates sa, a ClusterRole with rules and the binding, under names
// of this run, waits until the authorizer allows every permission of
// rules, and returns a token minted for sa.
func (h *harness) grant(r *run, sa *corev1.ServiceAccount, binding *rbacv1.ClusterRoleBinding, rules []rbacv1.PolicyRule) string {
	t, ctx := r.t, context.Background()
	suffix := fmt.Sprintf("-%d", r.id)
	sa = sa.DeepCopy()
	sa.Name += suffix
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: binding.RoleRef.Name + suffix}, Rules: rules}
	binding = binding.DeepCopy()
	binding.Name += suffix
	binding.RoleRef.Name = role.Name
	binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: sa.Namespace}}
	_, err := h.cs.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, sa, metav1.CreateOptions{})
	must(t, err)
	_, err = h.cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
	must(t, err)
	_, err = h.cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
	must(t, err)
	r.clean = append(r.clean, func() {
		h.cs.RbacV1().ClusterRoleBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{})
		h.cs.RbacV1().ClusterRoles().Delete(ctx, role.Name, metav1.DeleteOptions{})
		h.cs.CoreV1().ServiceAccounts(sa.Namespace).Delete(ctx, sa.Name, metav1.DeleteOptions{})
	})
	user := "system:serviceaccount:" + sa.Namespace + ":" + sa.Name
	poll(t, stepTimeout, "RBAC to allow "+user+" its role", func() (bool, string) {
		for _, p := range permissions(rules) {
			res, sub, _ := strings.Cut(p.Resource, "/")
			sar, err := h.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.Namespace, "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{Verb: p.Verb, Group: p.Group, Resource: res, Subresource: sub},
			}}, metav1.CreateOptions{})
			if err != nil || !sar.Status.Allowed {
				return false, fmt.Sprintf("%s: %v %+v", p, err, sar)
			}
		}
		return true, ""
	})
	tr, err := h.cs.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(ctx, sa.Name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	must(t, err)
	return tr.Status.Token
}

// startProcess starts the test binary as the container's runtime in the
// node's network namespace and a mount namespace of its own; it execs the
// program. The program is stopped (SIGTERM) when the test ends.
func (r *run) startProcess() {
	spec, err := json.Marshal(r.spec)
	must(r.t, err)
	self, err := os.Executable()
	must(r.t, err)
	r.cmd = exec.Command(self)
	r.cmd.Env = []string{containerEnv + "=" + string(spec)}
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	must(r.t, r.ns.Do(r.cmd.Start))
	go func() {
		r.cmd.Wait()
		close(r.done)
	}()
	r.t.Cleanup(func() {
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
			<-r.done
		}
	})
	// The program runs once the runtime has exec'd it.
	poll(r.t, stepTimeout, "the program to start", func() (bool, string) {
		select {
		case <-r.done:
			r.t.Fatalf("the container exited at once: %v\n%s", r.cmd.ProcessState, r.log.String())
		default:
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", r.cmd.Process.Pid))
		return exe == r.spec.Path, fmt.Sprint(exe, err)
	})
}

// errNotDone is a step of a job not done within its deadline.
var errNotDone = errors.New("not done")

// forbiddenError is RBAC refusing the program something.
type forbiddenError struct {
	step     string
	requests []apiRequest
}

func (e *forbiddenError) Error() string {
	return fmt.Sprintf("%s: Forbidden: %v", e.step, e.requests)
}

// await polls cond until it holds. It fails at once when the API server
// has refused the program anything or the program has exited, and after
// stepTimeout with errNotDone.
func (r *run) await(step string, cond func() (bool, string)) error {
	deadline := time.Now().Add(stepTimeout)
	for {
		if f := r.rec.forbidden(); len(f) > 0 {
			return &forbiddenError{step, f}
		}
		select {
		case <-r.done:
			return fmt.Errorf("%s: the program exited: %v", step, r.cmd.ProcessState)
		default:
		}
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w within %v; last state: %s", step, errNotDone, stepTimeout, state)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}

// probesAnswer waits until every probe of the container answers 200
// where kubelet would send it on this node (its InternalIP 10.99.0.1).
func (r *run) probesAnswer() error {
	for _, p := range []*corev1.Probe{r.c.ReadinessProbe, r.c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			return fmt.Errorf("container %s: a probe is missing", r.c.Name)
		}
		dst, err := probeTarget(r.c, p.HTTPGet, nodeIP)
		if err != nil {
			return err
		}
		url := "http://" + dst.String() + p.HTTPGet.Path
		client := r.httpClient()
		if err := r.await("probe "+url, func() (bool, string) {
			resp, err := client.Get(url)
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK, resp.Status + " " + string(body)
		}); err != nil {
			return err
		}
	}
	return nil
}

// httpClient dials from the node's network namespace.
func (r *run) httpClient() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = r.ns.Do(func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}
}

// checkCaps: the program runs with the capabilities its security
// context gives.
func (r *run) checkCaps() {
	got, err := capEff(r.cmd.Process.Pid)
	must(r.t, err)
	var want uint64
	if r.spec.Privileged {
		want, err = capEff(os.Getpid())
		must(r.t, err)
	}
	for _, c := range r.spec.Caps {
		want |= 1 << c
	}
	if got != want {
		r.t.Errorf("the program's effective capabilities are %#x, want %#x", got, want)
	}
}

func capEff(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff")
}

// permissions lists every verb on every resource of rules.
func permissions(rules []rbacv1.PolicyRule) []permission {
	var out []permission
	for _, rule := range rules {
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					out = append(out, permission{g, res, v})
				}
			}
		}
	}
	return out
}

// without returns rules less permission p, each rule narrowed to the
// permissions it still grants.
func without(rules []rbacv1.PolicyRule, p permission) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, q := range permissions(rules) {
		if q != p {
			out = append(out, rbacv1.PolicyRule{APIGroups: []string{q.Group}, Resources: []string{q.Resource}, Verbs: []string{q.Verb}})
		}
	}
	return out
}

// TestRulesWrittenOut: the roles name every verb, resource and group
// (no wildcards, no resourceNames that could hide a rule), and no verb
// twice.
func TestRulesWrittenOut(t *testing.T) {
	m := mustLoad(t)
	for _, role := range m.roles {
		seen := map[permission]bool{}
		for _, rule := range role.Rules {
			if len(rule.NonResourceURLs) > 0 || len(rule.ResourceNames) > 0 {
				t.Errorf("%s: rule %+v: non-resource URLs or resource names", role.Name, rule)
			}
			for _, s := range slices.Concat(rule.APIGroups, rule.Resources, rule.Verbs) {
				if strings.Contains(s, "*") {
					t.Errorf("%s: rule %+v has a wildcard", role.Name, rule)
				}
			}
		}
		for _, p := range permissions(role.Rules) {
			if seen[p] {
				t.Errorf("%s: %s granted twice", role.Name, p)
			}
			seen[p] = true
		}
		if len(seen) == 0 {
			t.Errorf("%s grants nothing", role.Name)
		}
	}
}

func poll(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still not %s; last state: %s", d, what, state)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
