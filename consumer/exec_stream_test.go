package consumer_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
)

// An exec task that asks for it has its output published as the command
// writes it: the first line arrives while the command still runs (a
// second before the last, which it writes a second later), and once the
// result is in, every chunk is too, stdout's adding up to the recorded
// stdout. A task that does not ask publishes nothing.
func TestExecStreamsOutput(t *testing.T) {
	b := setup(t)
	const q = "stream"
	w := newWorker(t, b, consumer.Config{Queues: []string{q}})
	w.Handle(forq.TypeExec, consumer.ExecHandler(consumer.ExecConfig{Allow: true, Conn: b.nc}))
	start(t, w)

	run := func(stream bool) (chunks []*nats.Msg, at []time.Duration, x forq.ExecResult) {
		t.Helper()
		id := forq.NewID()
		ch := make(chan *nats.Msg, 64)
		sub, err := b.nc.ChanSubscribe(wire.OutputSubject(id, "*"), ch)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }() // fails only once the connection is closed, which ends the subscription too
		spec, _ := json.Marshal(forq.ExecSpec{Argv: []string{"sh", "-c", "echo one; echo oops >&2; sleep 1; echo two"}, Stream: stream})
		t0 := time.Now()
		if _, err := b.p.Enqueue(t.Context(), forq.Task{ID: id, Queue: q, Type: forq.TypeExec, Payload: spec, Record: true}); err != nil {
			t.Fatal(err)
		}
		res := make(chan *forq.Result, 1)
		go func() {
			r, err := b.p.Wait(t.Context(), id)
			if err != nil {
				t.Error(err)
			}
			res <- r
		}()
		for {
			select {
			case m := <-ch:
				chunks, at = append(chunks, m), append(at, time.Since(t0))
				continue
			case r := <-res:
				if r == nil {
					t.FailNow()
				}
				if err := json.Unmarshal(r.Result, &x); err != nil || r.State != forq.StateSucceeded {
					t.Fatalf("task %s %s: %v, result %s", r.ID, r.State, err, r.Result)
				}
			}
			break
		}
		// What the worker published before it wrote the result is ours
		// once the server has answered a ping sent after it.
		if err := b.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		for len(ch) > 0 {
			chunks, at = append(chunks, <-ch), append(at, time.Since(t0))
		}
		return chunks, at, x
	}

	chunks, at, x := run(true)
	var stdout, stderr strings.Builder
	firstLine, lastLine := time.Duration(-1), time.Duration(-1)
	for i, m := range chunks {
		switch {
		case strings.HasSuffix(m.Subject, ".stdout"):
			stdout.Write(m.Data)
			if strings.Contains(string(m.Data), "one") {
				firstLine = at[i]
			}
			if strings.Contains(string(m.Data), "two") {
				lastLine = at[i]
			}
		case strings.HasSuffix(m.Subject, ".stderr"):
			stderr.Write(m.Data)
		default:
			t.Errorf("chunk on %s", m.Subject)
		}
	}
	if stdout.String() != x.Stdout || stdout.String() != "one\ntwo\n" || stderr.String() != "oops\n" {
		t.Errorf("streamed stdout %q, stderr %q; recorded stdout %q; want one, two and oops", stdout.String(), stderr.String(), x.Stdout)
	}
	if firstLine < 0 || lastLine < 0 || lastLine-firstLine < 500*time.Millisecond {
		t.Errorf("first line at %s, last at %s: want the first while the command still ran, about 1s before the last", firstLine, lastLine)
	}

	if chunks, _, _ := run(false); len(chunks) > 0 {
		t.Errorf("a task without Stream published %d chunks", len(chunks))
	}
}
