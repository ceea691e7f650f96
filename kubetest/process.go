package kubetest

import (
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// process is one child: etcd or kube-apiserver, in a process group of its
// own, killed when the thread that started it ends (so a test binary that
// dies leaves no server behind).
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	out     io.Writer
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, set before done is closed
}

func startProcess(name, bin string, args []string, out io.Writer, logPath string) (*process, error) {
	p := &process{name: name, logPath: logPath, out: out, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// PR_SET_PDEATHSIG fires when the starting thread exits, not the
		// process: this goroutine keeps its thread until the child ends.
		runtime.LockOSThread()
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.cmd = cmd
		started <- nil
		p.err = cmd.Wait()
		if f, ok := out.(*os.File); ok && logPath != "" {
			f.Close()
		}
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// stop sends SIGTERM to the process group, SIGKILL after 10 s, and waits.
func (p *process) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	pgid := -p.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-p.done
	}
	return nil
}

// logTail is the end of the process's log file, for error messages.
func (p *process) logTail() string {
	if p.logPath == "" {
		return ""
	}
	data, err := os.ReadFile(p.logPath)
	if err != nil || len(data) == 0 {
		return ""
	}
	return "\n" + p.name + " log (" + p.logPath + "), last lines:\n" + lastLines(string(data), 15)
}
