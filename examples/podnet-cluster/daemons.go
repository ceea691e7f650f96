package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemon is a long-running program the demo runs for a worker
// (podnet-agent, podnet-service-proxy), as a node runs its agents. Its
// output goes to a log file under the state directory.
type daemon struct {
	name string // "podnet-agent on worker-0"
	log  string // its log file
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // the exit status, set before done is closed
}

// findProgram returns the path of name in the first of dirs that holds it.
func findProgram(dirs []string, name string) (string, error) {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("no %s in %s", name, strings.Join(dirs, string(filepath.ListSeparator)))
}

// startDaemon starts bin with args. The process runs in the demo's own
// network namespace, where the API server listens on loopback; it acts on
// its worker's namespace through --netns. It gets its own process group,
// so a Ctrl-C in the terminal reaches only the demo, which then stops it in
// order, and it is sent SIGTERM if the demo dies.
func (c *cluster) startDaemon(name, bin string, args ...string) (*daemon, error) {
	logDir := filepath.Join(stateDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return nil, err
	}
	d := &daemon{name: name, log: filepath.Join(logDir, strings.ReplaceAll(name, " ", "-")+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	c.daemons = append(c.daemons, d)
	return d, c.saveState()
}

// exited reports an error naming the daemon and the end of its log if it
// is no longer running.
func (d *daemon) exited() error {
	select {
	case <-d.done:
		return fmt.Errorf("%s exited (%v); the end of its log:\n%s", d.name, d.err, d.tail(15))
	default:
		return nil
	}
}

// stop sends SIGTERM and waits up to 10 s for the daemon to exit, then
// kills it.
func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// tail returns the last n lines of the daemon's log, indented.
func (d *daemon) tail(n int) string {
	b, err := os.ReadFile(d.log)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(0, len(lines)-n):]
	return "    " + strings.Join(lines, "\n    ")
}

// logContains reports whether the daemon's log has a line with all of subs,
// and returns the first such line.
func (d *daemon) logLine(subs ...string) (string, bool) {
	b, _ := os.ReadFile(d.log)
	for l := range strings.SplitSeq(string(b), "\n") {
		if containsAll([]string{l}, subs...) {
			return l, true
		}
	}
	return "", false
}

// processRecord is how the state record names a process: its PID and its
// start time, so that a PID reused by another program is left alone.
func processRecord(pid int) (string, bool) {
	start, ok := startTime(pid)
	return fmt.Sprintf("%d %s", pid, start), ok
}

// startTime returns field 22 of /proc/PID/stat (the start time in clock
// ticks since boot); ok is false when the process is gone or a zombie.
func startTime(pid int) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	// The command name (field 2) may hold spaces; it ends at the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(string(b[i+1:])) // field 3 onwards
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", false
	}
	return f[19], true
}

func (c *cluster) processLines() []string {
	var lines []string
	for _, d := range c.daemons {
		if d.cmd.Process == nil {
			continue
		}
		if rec, ok := processRecord(d.cmd.Process.Pid); ok {
			lines = append(lines, rec)
		}
	}
	return lines
}

// stopLeftoverProcesses ends the processes an earlier run recorded that
// are still the same processes: SIGTERM, then SIGKILL after 5 s.
func stopLeftoverProcesses() (int, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "processes"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var pids []int
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil || pid <= 1 {
			continue
		}
		if start, ok := startTime(pid); ok && start == f[1] {
			syscall.Kill(pid, syscall.SIGTERM)
			pids = append(pids, pid)
		}
	}
	n := len(pids)
	deadline := time.Now().Add(5 * time.Second)
	for len(pids) > 0 {
		pids = slices.DeleteFunc(pids, func(pid int) bool { _, alive := startTime(pid); return !alive })
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var errs []error
			for _, pid := range pids {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
				}
			}
			return n, errors.Join(errs...)
		}
		time.Sleep(20 * time.Millisecond) // polling interval while they exit
	}
	return n, nil
}
