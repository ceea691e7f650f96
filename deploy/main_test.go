package deploy

import (
	"fmt"
	"os"
	"testing"

	"github.com/podnet/podnet/internal/testenv/gobuild"
	"github.com/podnet/podnet/kubetest"
)

// binDir holds the programs the DaemonSets run, built from this tree,
// under the names of their image paths.
var binDir string

// programs are the image's programs the tests run, by package.
var programs = map[string]string{
	"podnet-agent":         "../examples/podnet-agent",
	"podnet-service-proxy": "../examples/podnet-service-proxy",
}

func TestMain(m *testing.M) {
	if os.Getenv(containerEnv) != "" {
		containerMain() // the test binary as a container's runtime: never returns
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	d, err := os.MkdirTemp("", "podnet-deploy-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(d)
	for name, pkg := range programs {
		if _, err := gobuild.Binary(d, name, pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	binDir = d
	return kubetest.Run(m)
}
