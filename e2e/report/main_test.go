package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A JUnit file as the e2e framework writes it (ginkgo's reporter with
// OmitFailureMessageAttr): a spec the focus left out, one the test skipped
// itself, a pass, a failure, and the suite's setup node.
const junit = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="1" errors="0" failures="1" time="30">
  <testsuite name="Kubernetes e2e suite" package="/" tests="5" disabled="0" skipped="2" errors="0" failures="1" time="30">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="2.5"></testcase>
    <testcase name="[It] [sig-storage] not chosen" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[It] [sig-network] Services should be chosen but skip [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0.1">
      <skipped message="skipped - Only supported for providers [gce] (not skeleton)"></skipped>
    </testcase>
    <testcase name="[It] [sig-network] DNS should provide DNS for services  [Conformance]" classname="Kubernetes e2e suite" status="passed" time="12.25"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" status="failed" time="15">
      <failure type="failed">[FAILED] Timed out after 10s.
more lines</failure>
    </testcase>
  </testsuite>
</testsuites>`

func TestReport(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "junit_01.xml"), []byte(junit), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, err := read([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if print(&b, "nftables", rs, false) {
		t.Error("a run with a failure reported as passed")
	}
	want := `nftables PASS   12.2s [sig-network] DNS should provide DNS for services  [Conformance]
nftables SKIP    0.1s [sig-network] Services should be chosen but skip [Conformance] — Only supported for providers [gce] (not skeleton)
nftables FAIL   15.0s [sig-network] Services should serve a basic endpoint from pods  [Conformance] — [FAILED] Timed out after 10s.
nftables: 1 passed, 1 failed, 1 skipped, 27s in tests
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestReportNoFiles(t *testing.T) {
	if _, err := read([]string{t.TempDir()}); err == nil {
		t.Error("a directory without JUnit files gave no error")
	}
}

// TestColumns: one row per test across runs, "—" where a run lacks it,
// a summary per run; a failure in any run fails the whole.
func TestColumns(t *testing.T) {
	a := []Result{{Name: "DNS works", Outcome: "pass", Seconds: 4.12}, {Name: "NodePort | hairpin", Outcome: "fail", Seconds: 3, Why: "timed out"}}
	b := []Result{{Name: "DNS works", Outcome: "pass", Seconds: 5}}
	var out strings.Builder
	if printColumns(&out, []run{{"nftables", a}, {"iptables", b}}) {
		t.Error("a failure in one run reported as passed")
	}
	want := "| test | nftables | iptables |\n|---|---|---|\n" +
		"| DNS works | pass 4.1 s | pass 5.0 s |\n" +
		"| NodePort \\| hairpin | fail 3.0 s — timed out | — |\n\n" +
		"nftables: 1 passed, 1 failed, 0 skipped, 7s in tests\n\n" +
		"iptables: 1 passed, 0 failed, 0 skipped, 5s in tests\n\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	if !printColumns(&strings.Builder{}, []run{{"iptables", b}}) {
		t.Error("a passing run reported as failed")
	}
}
