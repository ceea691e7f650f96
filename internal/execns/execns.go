// Package execns runs programs inside a network namespace: the process is
// started from a thread switched into the namespace by netns.Do, so it and
// its children live there, while the caller's thread never moves.
package execns

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"github.com/podnet/podnet/netns"
)

// Error is a program that ran and failed: its exit error and what it wrote
// to stderr.
type Error struct {
	Cmd    string
	Stderr string
	Err    error
}

func (e *Error) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		return fmt.Sprintf("%s: %v", e.Cmd, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Output runs name with args inside ns, feeding stdin (which may be nil),
// and returns its standard output. A failure to start is returned as is; a
// non-zero exit as *Error with the program's stderr. Only the start happens
// on the namespace thread; waiting does not hold it.
func Output(ctx context.Context, ns *netns.NS, stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := ns.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s in netns %q: %w", name, ns, err)
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), &Error{Cmd: name, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}
