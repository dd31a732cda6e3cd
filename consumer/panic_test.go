package consumer_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/producer"
)

// logBuf is a log destination tests read while workers write.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// panicLines are the file:line of the panics below, set as they panic.
var panicLines sync.Map

func panicValue() {
	_, file, line, _ := runtime.Caller(0)
	panicLines.Store("value", fmt.Sprintf("%s:%d", file, line+2))
	panic("the value")
}

func panicNilMap() {
	var m map[string]int
	_, file, line, _ := runtime.Caller(0)
	panicLines.Store("nilmap", fmt.Sprintf("%s:%d", file, line+2))
	m["x"] = 1 //nolint:staticcheck // SA5000: this nil map write is the panic under test
}

// A handler's panic fails the task with an error that names the value and
// the file:line that panicked, on one line and without the stack, in the
// record and the dead letter; the stack goes to the worker's log.
func TestPanicNamesItsLineAndLogsTheStack(t *testing.T) {
	b := setup(t)
	var logs logBuf
	w := newWorker(t, b, consumer.Config{Queues: []string{"p"}, Concurrency: 2,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	w.HandleFunc("value", func(context.Context, *consumer.Task) ([]byte, error) { panicValue(); return nil, nil })
	w.HandleFunc("nilmap", func(context.Context, *consumer.Task) ([]byte, error) { panicNilMap(); return nil, nil })
	start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, kind := range []string{"value", "nilmap"} {
		info, err := b.p.Enqueue(ctx, forq.Task{Type: kind, MaxAttempts: 1}, producer.WithQueue("p"), producer.WithRecord())
		if err != nil {
			t.Fatal(err)
		}
		r, err := b.p.Wait(ctx, info.ID)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := panicLines.Load(kind)
		at, _ := v.(string)
		if r.State != forq.StateDead || !strings.HasPrefix(r.Error, "handler panicked: ") || !strings.Contains(r.Error, "(at "+at+")") {
			t.Errorf("%s: %s with %q, want dead with an error naming %s", kind, r.State, r.Error, at)
		}
		if strings.Contains(r.Error, "\n") || strings.Contains(r.Error, "goroutine ") {
			t.Errorf("%s: the record's error has the stack: %q", kind, r.Error)
		}
		if kind == "nilmap" && !strings.Contains(r.Error, "assignment to entry in nil map") {
			t.Errorf("nilmap: %q does not have the runtime's error", r.Error)
		}
	}
	for _, d := range deadMsgs(t, b, "p", 2) {
		if e := d.Header.Get("Forq-Error"); strings.Contains(e, "goroutine ") || !strings.Contains(e, "panic_test.go:") {
			t.Errorf("dead letter's error %q: want file:line, no stack", e)
		}
	}
	out := logs.String()
	for _, s := range []string{`msg="handler panicked"`, "stack=", "goroutine ", "consumer_test.panicValue", "consumer_test.panicNilMap"} {
		if !strings.Contains(out, s) {
			t.Errorf("the log has no %q:\n%s", s, out)
		}
	}
}
