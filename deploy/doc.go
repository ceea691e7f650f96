// Package deploy holds the manifests that install podnet as a cluster's
// node network — `kubectl apply -f deploy/` — and their tests; it has no
// API. README.md says how to install and what each object is for.
//
// # The manifests
//
//   - podnet-config.yaml: the ConfigMap an installer fills in (the cluster
//     CIDR, the API server's real address, the proxy's backend);
//   - podnet-agent.yaml: ServiceAccount, ClusterRole, ClusterRoleBinding
//     and the DaemonSet of podnet-agent, whose init container installs the
//     CNI plugins into the node's /opt/cni/bin;
//   - podnet-service-proxy.yaml: the same for podnet-service-proxy, in
//     kube-proxy's place.
//
// # The tests
//
// The structure tests decode every document strictly with client-go's
// scheme and check what a DaemonSet of a node network must have (host
// networking, every taint tolerated, the node name from the downward API,
// probes on the ports and paths the programs serve, flags the programs
// define). They need nothing but a Go toolchain.
//
// The RBAC tests run each DaemonSet's container the way a runtime would:
// its command, its arguments with $(VAR) expanded from its environment
// (the downward API's node name, the ConfigMap's keys), the in-cluster
// credentials of a token minted for its ServiceAccount at
// /var/run/secrets/kubernetes.io/serviceaccount, its capabilities, in a
// network namespace of its own, against a real kube-apiserver with RBAC
// (package kubetest). A program must do its whole job with its
// ClusterRole and ask for nothing else; then, for every verb of the role,
// the program run without that one verb must fail with Forbidden — so a
// missing verb fails a test, and so does one the program never needs.
// They need root (a network namespace, a mount namespace for the
// credentials) and the kube-apiserver binary of `make deps`.
package deploy
