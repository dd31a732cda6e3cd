//go:build !unix

package producer

import "testing"

// cpuPerOp reports nothing where getrusage is missing: the benchmarks
// still report ns/op.
func cpuPerOp(b *testing.B) func() {
	b.Helper()
	return func() {}
}
