package podnet_test

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportedIdentifiersDocumented fails for every exported identifier of
// a library package (not main, not tests) that has no doc comment, and for
// every library package without a package comment: what pkg.go.dev shows
// must never be blank.
func TestExportedIdentifiersDocumented(t *testing.T) {
	dirs := map[string]bool{}
	filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != "." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			dirs[filepath.Dir(p)] = true
		}
		return nil
	})
	for dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		pkgs := map[string]map[string]*ast.File{}
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if pkgs[f.Name.Name] == nil {
				pkgs[f.Name.Name] = map[string]*ast.File{}
			}
			pkgs[f.Name.Name][file] = f
		}
		for name, pkg := range pkgs {
			if name == "main" {
				continue
			}
			hasPkgDoc := false
			for file, f := range pkg {
				if f.Doc != nil {
					hasPkgDoc = true
				}
				for _, decl := range f.Decls {
					for _, miss := range undocumented(decl) {
						t.Errorf("%s: %s has no doc comment", file, miss)
					}
				}
			}
			if !hasPkgDoc {
				t.Errorf("package %s (%s) has no package comment", name, dir)
			}
		}
	}
}

func undocumented(decl ast.Decl) []string {
	var out []string
	switch d := decl.(type) {
	case *ast.FuncDecl:
		// Methods that implement error, fmt.Stringer and errors' Unwrap say
		// what they do by their name.
		stdMethod := d.Recv != nil && (d.Name.Name == "Error" || d.Name.Name == "String" || d.Name.Name == "Unwrap")
		if d.Name.IsExported() && d.Doc == nil && !stdMethod && (d.Recv == nil || exportedRecv(d.Recv)) {
			out = append(out, d.Name.Name)
		}
	case *ast.GenDecl:
		for _, s := range d.Specs {
			switch s := s.(type) {
			case *ast.TypeSpec:
				if s.Name.IsExported() && d.Doc == nil && s.Doc == nil {
					out = append(out, s.Name.Name)
				}
			case *ast.ValueSpec:
				for _, n := range s.Names {
					if n.IsExported() && d.Doc == nil && s.Doc == nil && s.Comment == nil {
						out = append(out, n.Name)
					}
				}
			}
		}
	}
	return out
}

func exportedRecv(fl *ast.FieldList) bool {
	if len(fl.List) == 0 {
		return false
	}
	t := fl.List[0].Type
	if st, ok := t.(*ast.StarExpr); ok {
		t = st.X
	}
	if ix, ok := t.(*ast.IndexExpr); ok {
		t = ix.X
	}
	id, ok := t.(*ast.Ident)
	return ok && id.IsExported()
}

// TestExamplesImportOnlyPublicPackages fails when a program under
// examples/ imports an internal package: what the programs build, an
// importer of the SDK must be able to build too. Test files may use
// internal test support.
func TestExamplesImportOnlyPublicPackages(t *testing.T) {
	n := 0
	err := filepath.WalkDir("examples", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		n++
		for _, imp := range f.Imports {
			path := strings.Trim(imp.Path.Value, `"`)
			if !strings.Contains(path+"/", "/internal/") || !strings.HasPrefix(path, "github.com/podnet/podnet/") {
				continue
			}
			t.Errorf("%s imports %s: programs must be built from public packages", p, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no program files found under examples/")
	}
}

// maxTrackedFile is the largest file the repository may track: source,
// docs and small test data, never build output.
const maxTrackedFile = 1 << 20

// TestTrackedFilesAreSource fails when git tracks build output: an ELF
// (or any other binary) executable, an executable file that is not a
// script, or a file larger than 1 MiB. A committed binary stays in every
// clone forever.
func TestTrackedFilesAreSource(t *testing.T) {
	out, err := exec.Command("git", "ls-files", "-s", "-z").Output()
	if err != nil {
		if os.Getenv("PODNET_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("git ls-files: %v (the tree check needs a git checkout)", err)
		}
		t.Skipf("not a git checkout: %v", err)
	}
	n := 0
	for entry := range strings.SplitSeq(strings.TrimRight(string(out), "\x00"), "\x00") {
		// mode SP object SP stage TAB path
		meta, path, ok := strings.Cut(entry, "\t")
		if !ok {
			t.Fatalf("git ls-files: unexpected entry %q", entry)
		}
		n++
		if msg := trackedFileProblem(strings.Fields(meta)[0], path); msg != "" {
			t.Errorf("%s: %s", path, msg)
		}
	}
	if n == 0 {
		t.Fatal("git ls-files listed nothing")
	}
}

// trackedFileProblem says what is wrong with a tracked file of the given
// git mode, or "" when nothing is.
func trackedFileProblem(mode, path string) string {
	if mode == "120000" || mode == "160000" { // symlink, submodule
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "" // deleted in the work tree, not yet committed
	}
	if fi.Size() > maxTrackedFile {
		return fmt.Sprintf("%d bytes, more than %d: build output or data does not belong in git", fi.Size(), maxTrackedFile)
	}
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	head := make([]byte, 4)
	k, _ := io.ReadFull(f, head)
	head = head[:k]
	switch {
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return "an ELF binary: build output does not belong in git"
	case mode == "100755" && !bytes.HasPrefix(head, []byte("#!")):
		return "executable but not a script: build output does not belong in git"
	}
	return ""
}

// maxFuncLines is the longest a function declaration may span, from func
// to its closing brace: past it, a reader no longer sees the algorithm in
// the function, so name the steps instead.
const maxFuncLines = 80

// TestFunctionsAreShort fails for every function and method of the module,
// tests included, whose declaration spans more than maxFuncLines lines.
// Dot-directories, testdata and nested modules (a directory with its own
// go.mod, such as those under tools/) are not walked.
func TestFunctionsAreShort(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || isModuleRoot(p)) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			n++
			lines := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
			if lines > maxFuncLines {
				t.Errorf("%s: %s is %d lines, more than %d: name its steps", p, funcName(fn), lines, maxFuncLines)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no functions found")
	}
}

// isModuleRoot reports whether dir holds a go.mod of its own.
func isModuleRoot(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "go.mod"))
	return err == nil
}

// funcName names a function as Name or, for a method, Recv.Name.
func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	t := fn.Recv.List[0].Type
	if st, ok := t.(*ast.StarExpr); ok {
		t = st.X
	}
	switch x := t.(type) {
	case *ast.IndexExpr:
		t = x.X
	case *ast.IndexListExpr:
		t = x.X
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name + "." + fn.Name.Name
	}
	return fn.Name.Name
}
