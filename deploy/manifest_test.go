package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/policy/cnisock"
)

// Image is the one image reference of the manifests, which installers
// substitute with sed.
const Image = "podnet:dev"

// Namespace is where every namespaced object goes.
const Namespace = "kube-system"

// ConfigName is the ConfigMap an installer fills in.
const ConfigName = "podnet-config"

// manifests are the decoded objects of deploy/*.yaml.
type manifests struct {
	objects    []runtime.Object
	configMaps map[string]*corev1.ConfigMap
	accounts   map[string]*corev1.ServiceAccount
	roles      map[string]*rbacv1.ClusterRole
	bindings   map[string]*rbacv1.ClusterRoleBinding
	daemonSets map[string]*appsv1.DaemonSet
}

// loadManifests decodes every document of the directory's .yaml files
// with client-go's scheme, strictly: an unknown or duplicated field (a
// typo kubectl would reject) is an error.
func loadManifests(dir string) (*manifests, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no manifests in %s", dir)
	}
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	m := &manifests{configMaps: map[string]*corev1.ConfigMap{}, accounts: map[string]*corev1.ServiceAccount{},
		roles: map[string]*rbacv1.ClusterRole{}, bindings: map[string]*rbacv1.ClusterRoleBinding{}, daemonSets: map[string]*appsv1.DaemonSet{}}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, _, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("%s, document %d: %w", filepath.Base(f), i, err)
			}
			if err := m.add(obj); err != nil {
				return nil, fmt.Errorf("%s, document %d: %w", filepath.Base(f), i, err)
			}
		}
	}
	return m, nil
}

func (m *manifests) add(obj runtime.Object) error {
	m.objects = append(m.objects, obj)
	var name string
	var dup bool
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		name, dup = o.Name, m.configMaps[o.Name] != nil
		m.configMaps[o.Name] = o
	case *corev1.ServiceAccount:
		name, dup = o.Name, m.accounts[o.Name] != nil
		m.accounts[o.Name] = o
	case *rbacv1.ClusterRole:
		name, dup = o.Name, m.roles[o.Name] != nil
		m.roles[o.Name] = o
	case *rbacv1.ClusterRoleBinding:
		name, dup = o.Name, m.bindings[o.Name] != nil
		m.bindings[o.Name] = o
	case *appsv1.DaemonSet:
		name, dup = o.Name, m.daemonSets[o.Name] != nil
		m.daemonSets[o.Name] = o
	default:
		return fmt.Errorf("unexpected %T", obj)
	}
	if dup {
		return fmt.Errorf("%T %s twice", obj, name)
	}
	return nil
}

func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.SplitSeq(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

func mustLoad(t *testing.T) *manifests {
	t.Helper()
	m, err := loadManifests(".")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// roleOf returns the ClusterRole bound to the DaemonSet's ServiceAccount,
// and the account and binding.
func (m *manifests) roleOf(ds *appsv1.DaemonSet) (*corev1.ServiceAccount, *rbacv1.ClusterRoleBinding, *rbacv1.ClusterRole, error) {
	sa := m.accounts[ds.Spec.Template.Spec.ServiceAccountName]
	if sa == nil {
		return nil, nil, nil, fmt.Errorf("DaemonSet %s: ServiceAccount %q is not in the manifests", ds.Name, ds.Spec.Template.Spec.ServiceAccountName)
	}
	var found *rbacv1.ClusterRoleBinding
	for _, b := range m.bindings {
		for _, s := range b.Subjects {
			if s.Kind == rbacv1.ServiceAccountKind && s.Name == sa.Name && s.Namespace == sa.Namespace {
				if found != nil {
					return nil, nil, nil, fmt.Errorf("ServiceAccount %s is bound twice (%s, %s): one role per program", sa.Name, found.Name, b.Name)
				}
				found = b
			}
		}
	}
	if found == nil {
		return nil, nil, nil, fmt.Errorf("ServiceAccount %s is bound to no ClusterRole", sa.Name)
	}
	role := m.roles[found.RoleRef.Name]
	if found.RoleRef.Kind != "ClusterRole" || found.RoleRef.APIGroup != rbacv1.GroupName || role == nil {
		return nil, nil, nil, fmt.Errorf("ClusterRoleBinding %s refers to %s %q, not a ClusterRole of the manifests", found.Name, found.RoleRef.Kind, found.RoleRef.Name)
	}
	return sa, found, role, nil
}

// TestManifestsDecode: every document is a known kind, decoded strictly;
// namespaced objects are in kube-system; everything is labelled part of
// podnet; every container runs the one image, and the files name no
// other.
func TestManifestsDecode(t *testing.T) {
	m := mustLoad(t)
	if len(m.daemonSets) != 2 || m.configMaps[ConfigName] == nil {
		t.Fatalf("want the agent's and the proxy's DaemonSets and ConfigMap %s; have %d DaemonSets, ConfigMaps %v", ConfigName, len(m.daemonSets), keys(m.configMaps))
	}
	for _, obj := range m.objects {
		meta := obj.(interface {
			GetName() string
			GetNamespace() string
			GetLabels() map[string]string
		})
		what := fmt.Sprintf("%T %s", obj, meta.GetName())
		_, clusterScoped := obj.(*rbacv1.ClusterRole)
		if _, ok := obj.(*rbacv1.ClusterRoleBinding); ok {
			clusterScoped = true
		}
		if ns := meta.GetNamespace(); clusterScoped != (ns == "") || (!clusterScoped && ns != Namespace) {
			t.Errorf("%s: namespace %q, want %q for namespaced objects only", what, ns, Namespace)
		}
		if meta.GetLabels()["app.kubernetes.io/part-of"] != "podnet" {
			t.Errorf("%s: no label app.kubernetes.io/part-of=podnet", what)
		}
	}
	for _, ds := range m.daemonSets {
		for _, c := range allContainers(ds) {
			if c.Image != Image || c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("%s/%s: image %q pull policy %q, want %q IfNotPresent", ds.Name, c.Name, c.Image, c.ImagePullPolicy, Image)
			}
		}
	}
	files, _ := filepath.Glob("*.yaml")
	imageLine := regexp.MustCompile(`(?m)^\s*image:\s*(\S+)`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, sm := range imageLine.FindAllSubmatch(data, -1) {
			if string(sm[1]) != Image {
				t.Errorf("%s: image %s: every image must be the literal %s (installers sed it)", f, sm[1], Image)
			}
		}
	}
}

// TestDaemonSets: what a node network's DaemonSet needs, each a reason a
// node would be left without a network otherwise.
func TestDaemonSets(t *testing.T) {
	m := mustLoad(t)
	for _, ds := range m.daemonSets {
		t.Run(ds.Name, func(t *testing.T) {
			spec := ds.Spec.Template.Spec
			if !spec.HostNetwork {
				t.Error("hostNetwork is false: the pod would need the pod network it sets up")
			}
			if spec.PriorityClassName != "system-node-critical" {
				t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
			}
			if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
				return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" && tol.TolerationSeconds == nil
			}) {
				t.Errorf("tolerations %v: want {operator: Exists} (every taint, including NotReady's)", spec.Tolerations)
			}
			us := ds.Spec.UpdateStrategy
			if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil ||
				us.RollingUpdate.MaxUnavailable.String() != "1" {
				t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", us)
			}
			sel := ds.Spec.Selector
			if sel == nil || len(sel.MatchLabels) == 0 || len(sel.MatchExpressions) != 0 {
				t.Fatalf("selector %v, want matchLabels", sel)
			}
			for k, v := range sel.MatchLabels {
				if ds.Spec.Template.Labels[k] != v {
					t.Errorf("selector %s=%s does not match the template's labels %v", k, v, ds.Spec.Template.Labels)
				}
			}
			for _, k := range []string{"app.kubernetes.io/name", "app.kubernetes.io/part-of"} {
				if ds.Spec.Template.Labels[k] == "" || ds.Spec.Template.Labels[k] != ds.Labels[k] {
					t.Errorf("label %s: DaemonSet %q, pods %q: want both, equal", k, ds.Labels[k], ds.Spec.Template.Labels[k])
				}
			}
			if _, _, _, err := m.roleOf(ds); err != nil {
				t.Error(err)
			}
			checkVolumes(t, spec)
			for _, c := range allContainers(ds) {
				checkContainer(t, m, c)
			}
			if len(spec.Containers) != 1 {
				t.Errorf("%d containers, want the program's one", len(spec.Containers))
			}
		})
	}
}

func checkVolumes(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
		if v.HostPath != nil && v.HostPath.Type == nil {
			t.Errorf("hostPath volume %s has no type (Directory…, File…): a missing path would be made a directory silently", v.Name)
		}
	}
	for _, c := range allContainersOf(spec) {
		for _, vm := range c.VolumeMounts {
			if _, ok := vols[vm.Name]; !ok {
				t.Errorf("%s: volumeMount %s names no volume", c.Name, vm.Name)
			}
		}
	}
}

// checkContainer: resources requested; the node name from the downward
// API; every $(VAR) defined; ConfigMap keys that exist; the API server's
// address from the ConfigMap.
func checkContainer(t *testing.T, m *manifests, c corev1.Container) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("%s: no %s request", c.Name, r)
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
		if ref := e.ValueFrom; ref != nil && ref.ConfigMapKeyRef != nil {
			cm := m.configMaps[ref.ConfigMapKeyRef.Name]
			if cm == nil {
				t.Errorf("%s: env %s from ConfigMap %q, not in the manifests", c.Name, e.Name, ref.ConfigMapKeyRef.Name)
			} else if _, ok := cm.Data[ref.ConfigMapKeyRef.Key]; !ok {
				t.Errorf("%s: env %s from key %q, which ConfigMap %s has not", c.Name, e.Name, ref.ConfigMapKeyRef.Key, cm.Name)
			}
		}
	}
	for _, arg := range slices.Concat(c.Command, c.Args) {
		for _, sm := range varRef.FindAllStringSubmatch(arg, -1) {
			if _, ok := env[sm[1]]; !ok {
				t.Errorf("%s: argument %q refers to $(%s), which the container does not define", c.Name, arg, sm[1])
			}
		}
	}
	if len(c.Args) == 0 { // an init step
		return
	}
	if !slices.Contains(c.Args, "--node-name=$(NODE_NAME)") {
		t.Errorf("%s: no --node-name=$(NODE_NAME) (the program's default is the hostname, not the Node's name)", c.Name)
	}
	if e, ok := env["NODE_NAME"]; !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("%s: NODE_NAME is %+v, want the downward API's spec.nodeName", c.Name, e)
	}
	for _, name := range []string{"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"} {
		if e, ok := env[name]; !ok || e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil || e.ValueFrom.ConfigMapKeyRef.Name != ConfigName {
			t.Errorf("%s: %s is %+v, want it from ConfigMap %s: the kubernetes Service's cluster IP works only once the proxy runs", c.Name, name, e, ConfigName)
		}
	}
	if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--kubeconfig") }) {
		t.Errorf("%s: --kubeconfig given: the programs run with the in-cluster configuration", c.Name)
	}
}

// varRef is a kubelet $(VAR) reference.
var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// TestInitContainer: the agent's init step installs every plugin the
// conflist names (and loopback, which runtimes run for lo) into the
// directory mounted from the node's /opt/cni/bin, the agent writes the
// conflist into the directory mounted from the node's /etc/cni/net.d,
// and serves podnet-bridge in the node's /run/podnet.
func TestInitContainer(t *testing.T) {
	spec, ic := soleInitContainer(t, "podnet-agent", "installing the CNI plugins")
	if len(ic.Command) < 2 || ic.Command[0] != "/podnet-agent" {
		t.Fatalf("init command %q, want /podnet-agent --install-cni-bin=DIR BINARY...", ic.Command)
	}
	dir, ok := strings.CutPrefix(ic.Command[1], "--install-cni-bin=")
	if !ok {
		t.Fatalf("init command %q does not start with --install-cni-bin=DIR", ic.Command)
	}
	if hp := hostPathAt(spec, ic, dir); hp != "/opt/cni/bin" {
		t.Errorf("init container installs into %s, mounted from host path %q, want /opt/cni/bin", dir, hp)
	}
	var installed []string
	for _, src := range ic.Command[2:] {
		if !filepath.IsAbs(src) || filepath.Dir(src) != "/" {
			t.Errorf("init source %q: the image holds its binaries at /", src)
		}
		installed = append(installed, filepath.Base(src))
	}
	agent := spec.Containers[0]
	ipam := flagValue(agent.Args, "ipam")
	for _, plugin := range []string{"podnet-bridge", ipam, "portmap", "loopback"} {
		if !slices.Contains(installed, plugin) {
			t.Errorf("plugin %q (named by the conflist or run by the runtime) is not installed; installed: %q", plugin, installed)
		}
	}
	confDir := flagValue(agent.Args, "cni-conf-dir")
	if confDir == "" {
		confDir = "/etc/cni/net.d" // the agent's default
	}
	if hp := hostPathAt(spec, agent, confDir); hp != "/etc/cni/net.d" {
		t.Errorf("the agent writes the conflist into %s, mounted from host path %q, want /etc/cni/net.d", confDir, hp)
	}
	// The agent's socket must be where the conflist says, on the node,
	// for the plugin the runtime runs there.
	socket := flagValue(agent.Args, "policy-socket")
	if socket != cnisock.DefaultPath {
		t.Errorf("the agent's --policy-socket is %q, want %s: without it new pods are reachable against policy until kubelet reports their address", socket, cnisock.DefaultPath)
	}
	if dir := filepath.Dir(socket); hostPathAt(spec, agent, dir) != dir {
		t.Errorf("the agent serves podnet-bridge at %s (the conflist's policySocket), but %s is mounted from host path %q, want %s",
			socket, dir, hostPathAt(spec, agent, dir), dir)
	}
	for _, c := range spec.Containers {
		if hostPathAt(spec, c, "/run/xtables.lock") != "/run/xtables.lock" {
			t.Errorf("%s: the node's /run/xtables.lock is not mounted at /run/xtables.lock", c.Name)
		}
	}
}

// soleInitContainer returns the pod spec of DaemonSet name and its one
// init container, failing the test unless there is exactly one (whose
// job is what).
func soleInitContainer(t *testing.T, name, what string) (corev1.PodSpec, corev1.Container) {
	t.Helper()
	ds := mustLoad(t).daemonSets[name]
	if ds == nil {
		t.Fatalf("no %s DaemonSet", name)
	}
	spec := ds.Spec.Template.Spec
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%s: %d init containers, want one %s", name, len(spec.InitContainers), what)
	}
	return spec, spec.InitContainers[0]
}

// hostPathAt returns the host path of the hostPath volume c mounts at
// path ("" if none).
func hostPathAt(spec corev1.PodSpec, c corev1.Container, path string) string {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != path {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == vm.Name && v.HostPath != nil {
				return v.HostPath.Path
			}
		}
	}
	return ""
}

// flagValue returns the value of --name=VALUE in args ("" if absent).
func flagValue(args []string, name string) string {
	v := ""
	for _, a := range args {
		if s, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			v = s
		}
	}
	return v
}

func allContainers(ds *appsv1.DaemonSet) []corev1.Container {
	return allContainersOf(ds.Spec.Template.Spec)
}

func allContainersOf(spec corev1.PodSpec) []corev1.Container {
	return slices.Concat(spec.InitContainers, spec.Containers)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestManifestsAccepted: the API server accepts every object as kubectl
// apply would send it (a server-side dry run: validation and admission,
// such as the priority class existing and the rules on capabilities).
func TestManifestsAccepted(t *testing.T) {
	m := mustLoad(t)
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	must(t, err)
	ctx := context.Background()
	waitNamespace(t, cs)
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	for _, obj := range m.objects {
		var err error
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			_, err = cs.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, dry)
		case *corev1.ServiceAccount:
			_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, dry)
		case *rbacv1.ClusterRole:
			_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, dry)
		case *rbacv1.ClusterRoleBinding:
			_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, dry)
		case *appsv1.DaemonSet:
			_, err = cs.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, dry)
		}
		if err != nil {
			t.Errorf("%T %s: %v", obj, obj.(metav1.Object).GetName(), err)
		}
	}
}

// waitNamespace waits until the API server has made kube-system (it does
// so shortly after it starts).
func waitNamespace(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	poll(t, time.Minute, "namespace "+Namespace, func() (bool, string) {
		_, err := cs.CoreV1().Namespaces().Get(context.Background(), Namespace, metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})
}

// TestProxyConntrackStep: the proxy runs unprivileged with a read-only
// /proc/sys, so a privileged init step of the same program sets the
// conntrack timeouts first, with the same conntrack flags as the proxy
// (otherwise the proxy would find other values and could not fix them).
func TestProxyConntrackStep(t *testing.T) {
	spec, ic := soleInitContainer(t, "podnet-service-proxy", "setting the conntrack timeouts")
	proxy := spec.Containers[0]
	args := slices.Concat(ic.Command, ic.Args)
	if len(args) == 0 || args[0] != "/podnet-service-proxy" || !slices.Contains(args, "--conntrack-only") {
		t.Errorf("init step %q, want /podnet-service-proxy --conntrack-only", args)
	}
	if sc := ic.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the init step is not privileged: it could not write /proc/sys")
	}
	for _, f := range []string{"conntrack-tcp-timeout-established", "conntrack-tcp-timeout-close-wait"} {
		if a, b := flagValue(args, f), flagValue(slices.Concat(proxy.Command, proxy.Args), f); a != b {
			t.Errorf("--%s: init step %q, proxy %q", f, a, b)
		}
	}
}
