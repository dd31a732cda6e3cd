// Package archtest holds the tests of forq's architecture: the import rules
// between its packages (see DESIGN.md's "Packages"), the one home of the
// wire format's header names, and the root package's list of packages. It
// has no code of its own; run it with go test ./internal/archtest.
package archtest
