// Adapted from k8s.io/kubernetes v1.34.2 test/e2e/e2e_test.go,
// Copyright 2015 The Kubernetes Authors, Apache License 2.0.

package e2enetwork

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	yaml "go.yaml.in/yaml/v2"

	"k8s.io/component-base/logs"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"
	conformancetestdata "k8s.io/kubernetes/test/conformance/testdata"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"
	"k8s.io/kubernetes/test/e2e/framework/testfiles"
	e2ereporters "k8s.io/kubernetes/test/e2e/reporters"
	e2etestingmanifests "k8s.io/kubernetes/test/e2e/testing-manifests"
	testfixtures "k8s.io/kubernetes/test/fixtures"

	// Ensure auth plugins are loaded and logging flags are on the command line.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "k8s.io/component-base/logs/testinit"

	// Define and freeze the feature constants.
	_ "k8s.io/kubernetes/test/e2e/feature"

	// The specs: sig-network's own and its part of the common specs.
	_ "k8s.io/kubernetes/test/e2e/common/network"
	_ "k8s.io/kubernetes/test/e2e/network"

	// Reconfigure the framework as upstream's suite does.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/metrics/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/utils/format"
)

var progressReporter = &e2ereporters.ProgressReporter{}

// handleFlags sets up all flags and parses the command line.
func handleFlags() {
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
}

func TestMain(m *testing.M) {
	var versionFlag bool
	flag.CommandLine.BoolVar(&versionFlag, "version", false, "Displays version information.")
	listConformanceTests := flag.CommandLine.Bool("list-conformance-tests", false, "If true, will show list of conformance tests (of every SIG).")

	handleFlags()

	if versionFlag {
		fmt.Printf("%s\n", version.Get())
		os.Exit(0)
	}
	if flag.CommandLine.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unknown additional command line arguments: %s", flag.CommandLine.Args())
		os.Exit(1)
	}

	// Embedded manifests and fixtures, as upstream's binary carries them.
	testfiles.AddFileSource(e2etestingmanifests.GetE2ETestingManifestsFS())
	testfiles.AddFileSource(testfixtures.GetTestFixturesFS())
	testfiles.AddFileSource(conformancetestdata.GetConformanceTestdataFS())

	if *listConformanceTests {
		if err := printConformanceTests(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}

	framework.AfterReadingAllFlags(&framework.TestContext)
	if framework.TestContext.RepoRoot != "" {
		testfiles.AddFileSource(testfiles.RootFileSource{Root: framework.TestContext.RepoRoot})
	}

	os.Exit(m.Run())
}

// printConformanceTests prints upstream's conformance.yaml as
// --list-conformance-tests of e2e.test does.
func printConformanceTests() error {
	var tests []struct {
		Testname    string `yaml:"testname"`
		Codename    string `yaml:"codename"`
		Description string `yaml:"description"`
		Release     string `yaml:"release"`
		File        string `yaml:"file"`
	}
	data, err := testfiles.Read("test/conformance/testdata/conformance.yaml")
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, &tests); err != nil {
		return err
	}
	return yaml.NewEncoder(os.Stdout).Encode(tests)
}

// TestE2E runs the specs through Ginkgo; see RunE2ETests in upstream's e2e.go.
func TestE2E(t *testing.T) {
	// InitLogs disables contextual logging; upstream turns it back on.
	logs.InitLogs()
	defer logs.FlushLogs()
	klog.EnableContextualLogging(true)

	progressReporter = e2ereporters.NewProgressReporter(framework.TestContext.ProgressReportURL)
	gomega.RegisterFailHandler(framework.Fail)

	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	suiteConfig.LabelFilter = onlySIGNetwork(suiteConfig.LabelFilter)
	klog.Infof("Starting e2e run %q on Ginkgo node %d", framework.RunID, suiteConfig.ParallelProcess)
	ginkgo.RunSpecs(t, "Kubernetes e2e suite (sig-network)", suiteConfig, reporterConfig)
}

// onlySIGNetwork narrows a Ginkgo label filter to the specs labelled
// sig-network. Other SIGs' specs are linked in too, and would otherwise run:
// test/e2e/network imports test/e2e/apps (and so test/e2e/scheduling), and
// the framework's manifest package imports test/e2e/common.
func onlySIGNetwork(filter string) string {
	if filter == "" {
		return "sig-network"
	}
	return "sig-network && (" + filter + ")"
}
