package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// VersionCmd is "forq version"; the flag --version prints the same.
type VersionCmd struct{}

// Run prints the version.
func (c *VersionCmd) Run(env *Env) error {
	_, err := fmt.Fprintln(env.Stdout, version())
	return err
}

// version says which forq this is, from the build information Go writes
// into the binary: the module's version ("(devel)" for a build of a
// checkout, unless Go stamped it from the checkout's commit), the
// commit and whether the checkout had changes (vcs.revision,
// vcs.modified: set by go build in a checkout, not by go install
// module@version), and the Go release.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "forq (no build information), " + runtime.Version()
	}
	return versionOf(info)
}

// versionOf is version's line for info.
func versionOf(info *debug.BuildInfo) string {
	var b strings.Builder
	b.WriteString("forq " + info.Main.Version)
	vcs := map[string]string{}
	for _, s := range info.Settings {
		vcs[s.Key] = s.Value
	}
	if rev := vcs["vcs.revision"]; rev != "" {
		b.WriteString(", commit " + rev)
		if t := vcs["vcs.time"]; t != "" {
			b.WriteString(" of " + t)
		}
		if vcs["vcs.modified"] == "true" {
			b.WriteString(", modified")
		}
	}
	b.WriteString(", " + info.GoVersion)
	return b.String()
}
