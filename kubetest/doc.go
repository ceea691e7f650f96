// Package kubetest starts a real Kubernetes control plane — etcd and
// kube-apiserver — on loopback, for tests and demos of code that follows
// the Kubernetes API (podnet-service-proxy, podnet-agent, service/kube, or
// an importer's own controller).
//
// Start runs etcd with a fresh data directory and kube-apiserver against it,
// both bound to 127.0.0.1 on free ports, with a self-signed serving
// certificate, a static admin token (group system:masters), RBAC
// authorization and a service-account signing key, and waits until the API
// server answers /readyz. The ControlPlane it returns carries a
// *rest.Config and a kubeconfig file for that admin, and can stop and start
// the API server again on the same address (to test watch breaks) and
// compact etcd's history (to test 410 Gone). Stop ends both processes and
// removes every file.
//
// In a test package, one control plane serves every test:
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
//
//	func TestX(t *testing.T) {
//		cp := kubetest.Shared(t) // started once, on first use
//		cs, err := cp.Client()
//		...
//	}
//
// Main also runs the netns/nstest leak check. The binaries are found as
// Options documents: `make deps` builds kube-apiserver v1.34.2 into .refbin/
// and installs Debian's etcd-server. Nothing here needs privileges, and
// nothing touches a network namespace: both processes listen on the
// loopback address of the namespace the caller runs in.
package kubetest
