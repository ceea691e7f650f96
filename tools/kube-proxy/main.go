// Command kube-proxy is the upstream Kubernetes service proxy, v1.34.2,
// built from the Go module proxy so that podnet's benchmarks can run it
// side by side with podnet-service-proxy. It adds nothing of its own.
//
// k8s.io/kubernetes cannot be installed with go install (its go.mod
// replaces its staging modules by local paths), so this module pins it and
// replaces each staging module by its published version.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
