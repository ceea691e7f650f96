// Command mkimage writes a container image without a registry or a
// container engine: a docker-archive tarball, what `docker save` writes,
// that `ctr -n k8s.io images import` and `docker load` read. The image has
// one uncompressed layer built from files on this machine.
//
// The output is deterministic: entries are sorted, owned by 0:0 and dated
// at the Unix epoch, and the config carries no build time, so the same
// inputs give a byte-identical tarball.
//
//	mkimage --out busybox.tar --tag registry.k8s.io/e2e-test-images/busybox:1.37.0-1 \
//	    --add /tmp/bb/bin/busybox:/bin/busybox --symlink busybox:/bin/sh \
//	    --dir /tmp:1777 --env PATH=/usr/sbin:/usr/bin:/sbin:/bin --cmd '["sh"]'
//
// --add SRC:DST copies a file or a directory tree: a directory's contents
// land under DST, with their modes, and symlinks inside it are kept as
// symlinks; SRC itself is followed when it is a symlink, as Docker's COPY
// does. A DST ending in "/" receives a file under its own base name.
// Parent directories are made as needed (0755). When two inputs name the
// same path, the later one wins, unless one is a directory and the other
// is not: that is an error.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// jsonListFlag is a flag holding a JSON array of strings.
type jsonListFlag struct {
	v   []string
	set bool
}

func (j *jsonListFlag) String() string {
	if !j.set {
		return ""
	}
	b, _ := json.Marshal(j.v)
	return string(b)
}

func (j *jsonListFlag) Set(s string) error {
	var v []string
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return fmt.Errorf("want a JSON array of strings: %w", err)
	}
	j.v, j.set = v, true
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// run parses args, builds the layer and writes the archive.
func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	img, err := o.image()
	if err != nil {
		return err
	}
	var t tree
	for _, add := range o.layer {
		if err := add(&t); err != nil {
			return err
		}
	}
	return writeArchive(o.out, img, &t)
}

// options are the parsed command line.
type options struct {
	out, workdir, user string
	tags, env, ports   listFlag
	entrypoint, cmd    jsonListFlag
	layer              []func(*tree) error // in command-line order: a later input wins
}

// parse reads the command line; the layer inputs are checked for syntax
// here and applied by run.
func parse(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.StringVar(&o.out, "out", "", "the tarball to write (required)")
	fs.StringVar(&o.workdir, "workdir", "", "config.WorkingDir")
	fs.StringVar(&o.user, "user", "", "config.User, e.g. 65535:65535")
	fs.Var(&o.tags, "tag", "an image reference to tag the image with (repeatable, at least one)")
	fs.Func("add", "SRC:DST: copy a file or directory tree into the image (repeatable)", o.add)
	fs.Func("symlink", "TARGET:LINK: a symlink at LINK pointing to TARGET (repeatable)", o.symlink)
	fs.Func("dir", "DST[:MODE]: an empty directory, MODE in octal, 0755 by default (repeatable)", o.dir)
	fs.Var(&o.env, "env", "K=V: config.Env entry (repeatable)")
	fs.Var(&o.ports, "expose", "PORT[/PROTO]: config.ExposedPorts entry, tcp by default (repeatable)")
	fs.Var(&o.entrypoint, "entrypoint", `config.Entrypoint as a JSON array, e.g. '["/pause"]'`)
	fs.Var(&o.cmd, "cmd", `config.Cmd as a JSON array, e.g. '["sh"]'`)
	fs.SetOutput(io.Discard) // the error is returned; -h prints the usage below
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.out == "":
		return nil, errors.New("--out is required")
	case len(o.tags) == 0:
		return nil, errors.New("at least one --tag is required")
	}
	return o, nil
}

func (o *options) add(a string) error {
	src, dst, ok := strings.Cut(a, ":")
	if !ok || src == "" || dst == "" {
		return errors.New("want SRC:DST")
	}
	o.layer = append(o.layer, func(t *tree) error { return wrap("--add", a, t.addPath(src, dst)) })
	return nil
}

func (o *options) symlink(l string) error {
	target, link, ok := strings.Cut(l, ":")
	if !ok || target == "" || link == "" {
		return errors.New("want TARGET:LINK")
	}
	o.layer = append(o.layer, func(t *tree) error { return wrap("--symlink", l, t.addSymlink(link, target)) })
	return nil
}

func (o *options) dir(d string) error {
	dst, modeText, hasMode := strings.Cut(d, ":")
	mode := uint64(0o755)
	if hasMode {
		m, err := strconv.ParseUint(modeText, 8, 32)
		if err != nil || m > 0o7777 {
			return fmt.Errorf("mode %q is not an octal mode", modeText)
		}
		mode = m
	}
	o.layer = append(o.layer, func(t *tree) error {
		return wrap("--dir", d, t.addDir(dst, os.FileMode(mode&0o777)|specialBits(mode)))
	})
	return nil
}

// image checks the config inputs and returns what the archive describes.
func (o *options) image() (image, error) {
	for _, e := range o.env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return image{}, fmt.Errorf("--env %q: want K=V", e)
		}
	}
	var exposed map[string]struct{}
	for _, p := range o.ports {
		port, proto, hasProto := strings.Cut(p, "/")
		if !hasProto {
			proto = "tcp"
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || (proto != "tcp" && proto != "udp" && proto != "sctp") {
			return image{}, fmt.Errorf("--expose %q: want PORT[/tcp|udp|sctp]", p)
		}
		if exposed == nil {
			exposed = map[string]struct{}{}
		}
		exposed[port+"/"+proto] = struct{}{}
	}
	return image{
		Tags: o.tags,
		Config: containerConfig{
			Env:          o.env,
			Entrypoint:   o.entrypoint.v,
			Cmd:          o.cmd.v,
			WorkingDir:   o.workdir,
			User:         o.user,
			ExposedPorts: exposed,
		},
	}, nil
}

// wrap names the flag and value an error came from.
func wrap(flagName, value string, err error) error {
	if err != nil {
		return fmt.Errorf("%s %q: %w", flagName, value, err)
	}
	return nil
}

// specialBits turns the setuid, setgid and sticky bits of an octal mode
// into their os.FileMode flags.
func specialBits(mode uint64) os.FileMode {
	var m os.FileMode
	if mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}
