package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// containerEnv makes the test binary act as a container runtime's last
// step for the process the variable describes (a JSON containerSpec):
// set up its mount namespace and capabilities and exec it.
const containerEnv = "PODNET_DEPLOY_CONTAINER"

// saDir is where client-go's in-cluster configuration reads the pod's
// ServiceAccount token and the API server's CA.
const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// containerSpec is one container's process as a runtime starts it.
type containerSpec struct {
	Path string   // the program's binary on this machine
	Argv []string // argv[0] is the image path (/podnet-agent)
	Env  []string
	// Secrets are the files of saDir (token, ca.crt, namespace).
	Secrets map[string][]byte
	// Privileged keeps every capability and a writable /proc/sys;
	// otherwise the process gets exactly Caps (capability numbers) and a
	// read-only /proc/sys, as runc gives unprivileged containers.
	Privileged bool
	Caps       []int
	NoNewPrivs bool // allowPrivilegeEscalation: false
}

// containerMain runs in a fresh mount namespace (the parent started it
// with CLONE_NEWNS, made private by Go's fork): it mounts a tmpfs on
// /var/run holding the ServiceAccount files, restricts the process as the
// spec says and execs the program. A tmpfs on /var/run also hides the
// machine's /run/xtables.lock, so iptables locks a fresh one: the network
// namespace the program runs in is the test's own, with no other
// iptables user.
func containerMain() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "container:", err)
		os.Exit(126)
	}
	var s containerSpec
	if err := json.Unmarshal([]byte(os.Getenv(containerEnv)), &s); err != nil {
		fail(err)
	}
	if err := unix.Mount("tmpfs", "/var/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		fail(fmt.Errorf("mount tmpfs on /var/run: %w", err))
	}
	if err := os.MkdirAll(saDir, 0o755); err != nil {
		fail(err)
	}
	for name, data := range s.Secrets {
		if err := os.WriteFile(filepath.Join(saDir, name), data, 0o644); err != nil {
			fail(err)
		}
	}
	if !s.Privileged {
		if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			fail(err)
		}
		if err := unix.Mount("", "/proc/sys", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			fail(fmt.Errorf("remount /proc/sys read-only: %w", err))
		}
	}
	// Capabilities are per thread: restrict this one and exec from it.
	runtime.LockOSThread()
	if !s.Privileged {
		if err := restrictCaps(s.Caps); err != nil {
			fail(err)
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			fail(err)
		}
	}
	fail(syscall.Exec(s.Path, s.Argv, s.Env))
}

// restrictCaps leaves keep in the bounding set and nothing inheritable or
// ambient: a root process then execs with exactly keep, as runc starts a
// container's process.
func restrictCaps(keep []int) error {
	last, err := capLast()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if slices.Contains(keep, c) {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	return unix.Capset(&hdr, &data[0])
}

func capLast() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// defaultCaps is the capability set containerd and CRI-O give a
// container that asks for none.
var defaultCaps = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

var capNumbers = map[string]int{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "FSETID": unix.CAP_FSETID, "FOWNER": unix.CAP_FOWNER,
	"MKNOD": unix.CAP_MKNOD, "NET_RAW": unix.CAP_NET_RAW, "SETGID": unix.CAP_SETGID, "SETUID": unix.CAP_SETUID,
	"SETFCAP": unix.CAP_SETFCAP, "SETPCAP": unix.CAP_SETPCAP, "NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
	"SYS_CHROOT": unix.CAP_SYS_CHROOT, "KILL": unix.CAP_KILL, "AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"NET_ADMIN": unix.CAP_NET_ADMIN, "SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_MODULE": unix.CAP_SYS_MODULE,
	"SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "BPF": unix.CAP_BPF, "PERFMON": unix.CAP_PERFMON,
}

// containerCaps returns the capabilities an unprivileged container gets
// from its security context: the runtime's defaults, less drop (ALL: all
// of them), plus add.
func containerCaps(sc *corev1.SecurityContext) ([]int, error) {
	set := map[string]bool{}
	for _, c := range defaultCaps {
		set[c] = true
	}
	if sc != nil && sc.Capabilities != nil {
		for _, c := range sc.Capabilities.Drop {
			if c == "ALL" {
				clear(set)
			}
			delete(set, strings.TrimPrefix(string(c), "CAP_"))
		}
		for _, c := range sc.Capabilities.Add {
			set[strings.TrimPrefix(string(c), "CAP_")] = true
		}
	}
	var out []int
	for name := range set {
		n, ok := capNumbers[name]
		if !ok {
			return nil, fmt.Errorf("capability %s unknown to the test", name)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// podEnv is the environment kubelet gives container c of a pod on
// nodeName: the image's PATH, HOSTNAME (the node's, for host networking),
// the kubernetes Service's variables, then the container's own env in
// order, each value with $(VAR) expanded from what precedes it, the
// downward API's fields and the ConfigMap's keys resolved.
func podEnv(c corev1.Container, nodeName string, serviceEnv map[string]string, configMaps map[string]map[string]string) (map[string]string, []string, error) {
	env := map[string]string{"PATH": os.Getenv("PATH"), "HOSTNAME": nodeName}
	order := []string{"PATH", "HOSTNAME"}
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, k := range keys(serviceEnv) {
		set(k, serviceEnv[k])
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, expand(e.Value, env))
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "spec.nodeName":
				set(e.Name, nodeName)
			case "metadata.namespace":
				set(e.Name, Namespace)
			default:
				return nil, nil, fmt.Errorf("env %s: field %s unknown to the test", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			v, ok := configMaps[ref.Name][ref.Key]
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, nil, fmt.Errorf("env %s: ConfigMap %s has no key %s: kubelet would not start the container", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, v)
		default:
			return nil, nil, fmt.Errorf("env %s: a source unknown to the test", e.Name)
		}
	}
	list := make([]string, 0, len(order))
	for _, k := range order {
		list = append(list, k+"="+env[k])
	}
	return env, list, nil
}

// expand replaces $(VAR) by VAR's value where VAR is defined, and $$ by
// $, as kubelet expands a container's command, args and env values.
func expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i:], ')'); end > 0 {
				if v, ok := env[s[i+2:i+end]]; ok {
					b.WriteString(v)
					i += end
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
