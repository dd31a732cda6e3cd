package forq_test

import (
	"testing"

	"github.com/forqhq/forq"
)

// BenchmarkValidate measures validating a new task and giving it an ID,
// the first step of every enqueue.
func BenchmarkValidate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		t := forq.Task{Type: "noop", Payload: make([]byte, 64)}
		if err := t.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
