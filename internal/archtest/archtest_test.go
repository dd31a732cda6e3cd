package archtest

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/forqhq/forq"

// goCmd runs the go command in the module's root and returns its output.
func goCmd(t *testing.T, args ...string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list packages: %v", err)
	}
	cmd := exec.Command(gobin, args...)
	cmd.Dir = moduleRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out)
}

// moduleRoot is the directory of go.mod: two levels above this package.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

// packages returns the import paths of the module's packages.
func packages(t *testing.T) []string {
	t.Helper()
	return strings.Fields(goCmd(t, "list", "./..."))
}

// deps returns the import paths pkg depends on, directly or not, in its
// non-test files (go list -deps: what a program importing pkg links).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	all := strings.Fields(goCmd(t, "list", "-deps", "-f", "{{.ImportPath}}", pkg))
	return slices.DeleteFunc(all, func(p string) bool { return p == pkg })
}

// The import rules of the design: pool knows nothing of NATS; producer,
// consumer and admin never import each other (what two of them share lives
// under internal/); the root package imports nothing of NATS nor of the
// rest of the module. A rule of a package that does not exist (yet) is
// skipped.
func TestImportRules(t *testing.T) {
	nats := func(dep string) bool { return strings.HasPrefix(dep, "github.com/nats-io/") }
	rules := []struct {
		pkg       string
		forbidden func(dep string) bool
		rule      string
	}{
		{"pool", nats, "pool imports nothing of NATS"},
		{"", nats, "the root package imports nothing of NATS"},
		{"", func(dep string) bool { return strings.HasPrefix(dep, module+"/") }, "the root package imports no other package of the module"},
		{"producer", inSet("consumer", "admin"), "producer imports neither consumer nor admin"},
		{"consumer", inSet("producer", "admin"), "consumer imports neither producer nor admin"},
		{"admin", inSet("producer", "consumer"), "admin imports neither producer nor consumer"},
	}
	have := packages(t)
	for _, r := range rules {
		pkg := module
		if r.pkg != "" {
			pkg += "/" + r.pkg
		}
		t.Run(r.rule, func(t *testing.T) {
			if !slices.Contains(have, pkg) {
				t.Skipf("%s does not exist", pkg)
			}
			for _, dep := range deps(t, pkg) {
				if r.forbidden(dep) {
					t.Errorf("%s depends on %s (see go list -deps %s); want: %s", pkg, dep, pkg, r.rule)
				}
			}
		})
	}
}

func inSet(names ...string) func(string) bool {
	return func(dep string) bool {
		for _, n := range names {
			if dep == module+"/"+n {
				return true
			}
		}
		return false
	}
}

// The rules above are only as good as go list -deps: it must see the
// dependencies that are there.
func TestDepsSeesNATS(t *testing.T) {
	if got := deps(t, module+"/consumer"); !slices.Contains(got, "github.com/nats-io/nats.go") {
		t.Fatalf("go list -deps of consumer: got %d packages without github.com/nats-io/nats.go, want it among them", len(got))
	}
}

// headerName is a string literal that is a Forq-* header name, or the
// Forq- prefix itself. Prose that mentions a header (a help text, an error
// message) neither writes nor parses one.
var headerName = regexp.MustCompile(`^Forq-[A-Za-z0-9-]*$`)

// Only internal/wire writes or parses the Forq-* header names: no string
// literal of any other non-test Go file holds one. (Test files may spell
// the names out, to check what is on the wire.)
func TestHeaderNamesOnlyInWire(t *testing.T) {
	root := moduleRoot(t)
	wire := filepath.Join(root, "internal", "wire")
	if _, err := os.Stat(wire); errors.Is(err, fs.ErrNotExist) {
		t.Skip("internal/wire does not exist yet: the header names still live elsewhere")
	}
	var found []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			if path == wire {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err == nil && headerName.MatchString(s) {
				rel, _ := filepath.Rel(root, fset.Position(lit.Pos()).Filename)
				found = append(found, rel+":"+strconv.Itoa(fset.Position(lit.Pos()).Line)+": "+lit.Value)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		t.Errorf("%s: a Forq- header name outside internal/wire; name it there and use it through wire's codec", f)
	}
}

// go doc github.com/forqhq/forq lists every package of the module, by its
// path relative to the module's root.
func TestRootDocListsEveryPackage(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(moduleRoot(t), "doc.go"), nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil {
		t.Fatal("doc.go has no package comment")
	}
	doc := f.Doc.Text()
	for _, pkg := range packages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		if rel == "" {
			continue
		}
		if !regexp.MustCompile(`(^|\s)` + regexp.QuoteMeta(rel) + `\b`).MatchString(doc) {
			t.Errorf("the package comment of doc.go does not name %s: say in a line what it is for", rel)
		}
	}
}
