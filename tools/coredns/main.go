// Command coredns is CoreDNS v1.13.2 with the plugins a kube-dns Corefile
// uses (kubeadm's default one, plus log and hosts), built from the Go module
// proxy as the e2e cluster's DNS. It adds nothing of its own.
//
// CoreDNS chooses its plugins at build time: each plugin package registers
// itself when imported, and the server orders them by its fixed directive
// list, so importing a subset here is all a smaller build takes. A Corefile
// naming a plugin not imported here fails to load.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // the "prometheus" directive
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
