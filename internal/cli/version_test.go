package cli

import (
	"bytes"
	"runtime/debug"
	"testing"
)

func TestVersionOf(t *testing.T) {
	main := debug.Module{Path: "github.com/forqhq/forq", Version: "(devel)"}
	for _, tt := range []struct {
		name     string
		settings []debug.BuildSetting
		version  string
		want     string
	}{
		{"checkout with changes", []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "4a45908294a1f55f932894d1f7b0bbe02015d461"},
			{Key: "vcs.time", Value: "2026-12-03T10:28:37Z"}, {Key: "vcs.modified", Value: "true"}}, "(devel)",
			"forq (devel), commit 4a45908294a1f55f932894d1f7b0bbe02015d461 of 2026-12-03T10:28:37Z, modified, go1.26.0"},
		{"clean checkout", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}, "v0.0.0-20261203102837-abc",
			"forq v0.0.0-20261203102837-abc, commit abc, go1.26.0"},
		{"go install module@version", nil, "v1.2.3", "forq v1.2.3, go1.26.0"},
	} {
		m := main
		m.Version = tt.version
		got := versionOf(&debug.BuildInfo{GoVersion: "go1.26.0", Main: m, Settings: tt.settings})
		if got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

// forq version and forq --version print the same line: this binary's
// version, from its build information.
func TestVersionCommandAndFlag(t *testing.T) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		t.Skip("no build information in this test binary")
	}
	want := versionOf(info) + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}, {"--version", "enqueue"}} {
		var out, errb bytes.Buffer
		if code := Main(args, nil, &out, &errb); code != 0 || out.String() != want || errb.Len() > 0 {
			t.Errorf("forq %q: exit %d, stdout %q, stderr %q; want exit 0 and %q", args, code, out.String(), errb.String(), want)
		}
	}
}
