// Package e2enetwork is the upstream Kubernetes v1.34.2 end-to-end suite cut
// down to sig-network: `go test -c` of this package builds e2e-network.test,
// which accepts upstream's e2e.test flags (--kubeconfig, --provider,
// --ginkgo.*, --report-dir, --num-nodes, ...) and runs only the specs
// labelled sig-network: those of k8s.io/kubernetes/test/e2e/network and
// test/e2e/common/network (where four of the [sig-network] [Conformance]
// specs live).
//
// Some other SIGs' specs are linked in all the same, through imports
// upstream's packages make (test/e2e/network imports test/e2e/apps); the
// suite adds "sig-network &&" to every --ginkgo.label-filter so that they
// never run.
//
// The suite wiring in the _test.go files follows upstream's test/e2e
// e2e_test.go and e2e.go, less what only the other SIGs' specs or a cloud
// need (image pre-pulling, GCE image lookup). Upstream's package cannot be
// imported for it: it links every SIG's specs and every cloud provider.
package e2enetwork
