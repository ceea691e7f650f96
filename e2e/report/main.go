// Command report prints the result of an e2e run from the JUnit files the
// upstream e2e binary writes into its --report-dir: one line per test that
// ran (passed, failed) or was chosen but skipped by the test itself, then a
// summary, and optionally the same as a Markdown table.
//
//	go run ./e2e/report [-markdown] [-label nftables] DIR...
//	go run ./e2e/report -columns nftables=DIR iptables=DIR
//
// With -columns it prints one Markdown table with a column per run (each
// LABEL=DIR): a test's outcome and seconds in each, "—" where that run
// did not have it.
//
// Tests the focus and skip expressions left out are not listed. The exit
// status is 1 when a test failed or none ran.
package main

import (
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// suites is the root of a JUnit file.
type suites struct {
	Suites []suite `xml:"testsuite"`
}

type suite struct {
	Cases []testCase `xml:"testcase"`
}

type testCase struct {
	Name    string   `xml:"name,attr"`
	Time    float64  `xml:"time,attr"`
	Failure *message `xml:"failure"`
	Error   *message `xml:"error"`
	Skipped *message `xml:"skipped"`
}

type message struct {
	Message string `xml:"message,attr"`
	Body    string `xml:",chardata"`
}

// Result is one test's outcome.
type Result struct {
	Name    string
	Outcome string // "pass", "fail" or "skip"
	Seconds float64
	Why     string // a failure's or skip's first line
}

// read collects the results of every junit*.xml file under dirs. A test
// skipped because the run's focus or skip left it out is dropped: it was
// never chosen.
func read(dirs []string) ([]Result, error) {
	var out []Result
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "junit*.xml"))
		if err != nil {
			return nil, err
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("%s: no junit*.xml", dir)
		}
		for _, f := range files {
			rs, err := readFile(f)
			if err != nil {
				return nil, err
			}
			out = append(out, rs...)
		}
	}
	return out, nil
}

func readFile(path string) ([]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s suites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []Result
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			if r, ok := result(c); ok {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// result turns a test case into a Result; ok is false for a spec the run's
// filters left out (ginkgo's bare "skipped"), a pending one, and the
// suite's setup and teardown nodes unless they failed.
func result(c testCase) (Result, bool) {
	r := Result{Name: strings.TrimPrefix(c.Name, "[It] "), Seconds: c.Time}
	switch {
	case c.Failure != nil || c.Error != nil:
		m := c.Failure
		if m == nil {
			m = c.Error
		}
		r.Outcome, r.Why = "fail", firstLine(m.Message, m.Body)
	case c.Skipped != nil:
		if c.Skipped.Message == "skipped" || c.Skipped.Message == "pending" {
			return r, false
		}
		r.Outcome, r.Why = "skip", firstLine(c.Skipped.Message, "")
	default:
		r.Outcome = "pass"
	}
	if !strings.HasPrefix(c.Name, "[It] ") {
		return r, r.Outcome == "fail"
	}
	return r, true
}

func firstLine(a, b string) string {
	s := strings.TrimSpace(a)
	if s == "" {
		s = strings.TrimSpace(b)
	}
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimPrefix(s, "skipped - ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// print writes one line per result and a summary; it reports whether the
// run passed (something ran and nothing failed).
func print(w io.Writer, label string, rs []Result, markdown bool) bool {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Name < rs[j].Name })
	n := map[string]int{}
	var total float64
	if markdown {
		fmt.Fprintf(w, "| %s | result | seconds |\n|---|---|---|\n", label)
	}
	for _, r := range rs {
		n[r.Outcome]++
		total += r.Seconds
		why := ""
		if r.Why != "" {
			why = " — " + r.Why
		}
		if markdown {
			fmt.Fprintf(w, "| %s | %s%s | %.1f |\n", strings.ReplaceAll(r.Name, "|", `\|`), r.Outcome, why, r.Seconds)
		} else {
			fmt.Fprintf(w, "%s %-4s %6.1fs %s%s\n", label, strings.ToUpper(r.Outcome), r.Seconds, r.Name, why)
		}
	}
	fmt.Fprintf(w, "%s: %d passed, %d failed, %d skipped, %.0fs in tests\n", label, n["pass"], n["fail"], n["skip"], total)
	return n["fail"] == 0 && n["pass"] > 0
}

// run is one labelled run's results, for printColumns.
type run struct {
	label   string
	results []Result
}

// printColumns writes a Markdown table of the tests of every run, one
// column per run, then each run's summary line; it reports whether every
// run passed.
func printColumns(w io.Writer, runs []run) bool {
	cells := map[string][]string{}
	for i, r := range runs {
		for _, res := range r.results {
			if cells[res.Name] == nil {
				cells[res.Name] = make([]string, len(runs))
			}
			c := fmt.Sprintf("%s %.1f s", res.Outcome, res.Seconds)
			if res.Why != "" {
				c += " — " + res.Why
			}
			cells[res.Name][i] = strings.ReplaceAll(c, "|", `\|`)
		}
	}
	names := make([]string, 0, len(cells))
	for n := range cells {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprint(w, "| test |")
	for _, r := range runs {
		fmt.Fprintf(w, " %s |", r.label)
	}
	fmt.Fprint(w, "\n|---|"+strings.Repeat("---|", len(runs))+"\n")
	for _, n := range names {
		fmt.Fprintf(w, "| %s |", strings.ReplaceAll(n, "|", `\|`))
		for _, c := range cells[n] {
			if c == "" {
				c = "—"
			}
			fmt.Fprintf(w, " %s |", c)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	ok := true
	for _, r := range runs {
		n := map[string]int{}
		var total float64
		for _, res := range r.results {
			n[res.Outcome]++
			total += res.Seconds
		}
		fmt.Fprintf(w, "%s: %d passed, %d failed, %d skipped, %.0fs in tests\n\n", r.label, n["pass"], n["fail"], n["skip"], total)
		ok = ok && n["fail"] == 0 && n["pass"] > 0
	}
	return ok
}

func main() {
	markdown := flag.Bool("markdown", false, "print a Markdown table")
	label := flag.String("label", "e2e", "label of every line (the proxy backend)")
	columns := flag.Bool("columns", false, "arguments are LABEL=DIR; print one Markdown table with a column per run")
	flag.Parse()
	if *columns {
		var runs []run
		for _, a := range flag.Args() {
			l, dir, ok := strings.Cut(a, "=")
			if !ok {
				fmt.Fprintf(os.Stderr, "report: -columns wants LABEL=DIR, not %q\n", a)
				os.Exit(2)
			}
			rs, err := read([]string{dir})
			if err != nil {
				fmt.Fprintln(os.Stderr, "report:", err)
				os.Exit(2)
			}
			runs = append(runs, run{l, rs})
		}
		if !printColumns(os.Stdout, runs) {
			os.Exit(1)
		}
		return
	}
	rs, err := read(flag.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(2)
	}
	if !print(os.Stdout, *label, rs, *markdown) {
		os.Exit(1)
	}
}
