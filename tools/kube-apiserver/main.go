// Command kube-apiserver is the upstream Kubernetes API server, v1.34.2,
// built from the Go module proxy so that podnet's tests and benchmarks can
// run against a real control plane. It adds nothing of its own.
//
// k8s.io/kubernetes cannot be installed with go install (its go.mod replaces
// its staging modules by local paths), so this module pins it and replaces
// each staging module by its published version.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
