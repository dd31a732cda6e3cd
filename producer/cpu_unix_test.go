//go:build unix

package producer

import (
	"syscall"
	"testing"
)

// cpuPerOp reports the process's CPU time (user and system: the client's
// and the embedded broker's) per operation, as cpu-ns/op: less moved by a
// busy machine than ns/op. Call the function it returns at the end.
func cpuPerOp(b *testing.B) func() {
	b.Helper()
	cpu := func() int64 {
		var u syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &u)
		return u.Utime.Nano() + u.Stime.Nano()
	}
	t0 := cpu()
	return func() { b.ReportMetric(float64(cpu()-t0)/float64(b.N), "cpu-ns/op") }
}
