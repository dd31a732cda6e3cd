package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// forq --version and forq version print the module version of the built
// binary and, when the build stamped it, its commit and whether the
// checkout was modified: what "go version -m" reads from the binary.
func TestVersion(t *testing.T) {
	out, err := exec.Command("go", "version", "-m", bin["forq"]).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	var mod string
	build := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[0] == "mod":
			mod = f[2]
		case len(f) == 2 && f[0] == "build":
			k, v, _ := strings.Cut(f[1], "=")
			build[k] = v
		}
	}
	if mod == "" {
		t.Fatalf("no mod line in go version -m's output:\n%s", out)
	}
	var first string
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, stdout, stderr := run(t, nil, nil, args...)
		if code != 0 || stderr != "" || strings.Count(stdout, "\n") != 1 {
			t.Fatalf("forq %s: exit %d, stdout %q, stderr %q; want exit 0 and one line", args[0], code, stdout, stderr)
		}
		if first == "" {
			first = stdout
		} else if stdout != first {
			t.Errorf("forq version printed %q, forq --version %q; want the same", stdout, first)
		}
		if !strings.HasPrefix(stdout, "forq "+mod+",") {
			t.Errorf("forq %s: %q, want it to start with the module version %q", args[0], stdout, mod)
		}
		rev := build["vcs.revision"]
		switch {
		case rev != "" && !strings.Contains(stdout, ", commit "+rev):
			t.Errorf("forq %s: %q, want the commit %s", args[0], stdout, rev)
		case rev == "" && strings.Contains(stdout, "commit"):
			t.Errorf("forq %s: %q names a commit, but the build stamped none", args[0], stdout)
		case (build["vcs.modified"] == "true") != strings.Contains(stdout, ", modified"):
			t.Errorf("forq %s: %q, but vcs.modified=%q", args[0], stdout, build["vcs.modified"])
		}
	}
	t.Logf("forq version: %s", strings.TrimSpace(first))
}
