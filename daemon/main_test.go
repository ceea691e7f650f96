package daemon_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/daemon"
)

// mainEnv makes the test binary run daemon.Main as a program would, in
// the way the variable names, instead of the tests.
const mainEnv = "PODNET_DAEMON_TEST_MAIN"

func TestMain(m *testing.M) {
	switch os.Getenv(mainEnv) {
	case "":
		os.Exit(m.Run())
	case "fail":
		daemon.Main("test-daemon", func(context.Context, *slog.Logger) error { return errors.New("no source") })
		fmt.Println("Main returned")
	case "wait":
		daemon.Main("test-daemon", func(ctx context.Context, log *slog.Logger) error {
			fmt.Println("running")
			<-ctx.Done()
			log.Info("stopping", "cause", ctx.Err())
			return nil
		})
		fmt.Println("Main returned")
	}
}

// program starts the test binary as a daemon in the given way and
// returns it with its stdout lines and its stderr.
func program(t *testing.T, way string) (*exec.Cmd, *bufio.Scanner, *strings.Builder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), mainEnv+"="+way)
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out), stderr
}

func TestMainExitsOneOnError(t *testing.T) {
	cmd, out, stderr := program(t, "fail")
	if out.Scan() {
		t.Errorf("Main returned after a failure: %q", out.Text())
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("exit: %v, want status 1", err)
	}
	if !strings.Contains(stderr.String(), `level=ERROR msg=test-daemon err="no source"`) {
		t.Errorf("stderr %q does not log the error under the program's name", stderr.String())
	}
}

func TestMainStopsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd, out, stderr := program(t, "wait")
		if !out.Scan() || out.Text() != "running" {
			t.Fatalf("%v: the program did not start: %q, stderr %q", sig, out.Text(), stderr.String())
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if !out.Scan() || out.Text() != "Main returned" {
			t.Errorf("%v: Main did not return: %q", sig, out.Text())
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("%v: exit: %v, want 0; stderr %q", sig, err, stderr.String())
		}
		if !strings.Contains(stderr.String(), `msg=stopping cause="context canceled"`) {
			t.Errorf("%v: run did not see its context cancelled: %q", sig, stderr.String())
		}
	}
}
