package consumer_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// A task's record keeps its failed attempts: the last forq.MaxHistory of
// them, oldest first, each error cut to forq.MaxHistoryError bytes, with
// the worker that ran it; a task that did not ask for a record keeps them
// too, and one that succeeds after failing keeps its failures.
func TestRecordKeepsTheFailedAttempts(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"h"}, Concurrency: 2, RetryBase: time.Millisecond, RetryMax: time.Millisecond})
	long := strings.Repeat("é", forq.MaxHistoryError) // 2 bytes each: the cut falls inside one
	w.HandleFunc("fail", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		return nil, errors.New("attempt " + strconv.Itoa(task.Attempt) + " " + long)
	})
	w.HandleFunc("third", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		if task.Attempt < 3 {
			return nil, errors.New("not yet " + strconv.Itoa(task.Attempt))
		}
		return []byte("ok"), nil
	})
	start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	info, err := b.p.Enqueue(ctx, forq.Task{Type: "fail"}, producer.WithQueue("h"), producer.WithMaxAttempts(forq.MaxHistory+3))
	if err != nil {
		t.Fatal(err)
	}
	// Without a record asked for, its failures are recorded all the same.
	var r *forq.Result
	testutil.Eventually(t, 30*time.Second, func() bool {
		r, err = b.p.Result(ctx, info.ID)
		return err == nil && r.State == forq.StateDead
	}, "the failing task was not dead-lettered")
	if r.State != forq.StateDead || len(r.History) != forq.MaxHistory {
		t.Fatalf("record: state %s, %d attempts in its history; want dead, %d", r.State, len(r.History), forq.MaxHistory)
	}
	host, _ := os.Hostname()
	for i, a := range r.History {
		n := 4 + i // the first 3 of 13 are dropped
		if a.Attempt != n || !strings.HasPrefix(a.Error, "attempt "+strconv.Itoa(n)+" é") || len(a.Error) > forq.MaxHistoryError ||
			!strings.HasSuffix(a.Error, "…") || !utf8.ValidString(a.Error) || a.PID != os.Getpid() || a.Host != host || a.At.IsZero() {
			t.Errorf("history[%d]: attempt %d, pid %d, host %q, at %s, error of %d bytes %.30q…; want attempt %d of this process, a time, its error cut to at most %d bytes",
				i, a.Attempt, a.PID, a.Host, a.At, len(a.Error), a.Error, n, forq.MaxHistoryError)
		}
	}
	if len(r.Error) <= forq.MaxHistoryError {
		t.Errorf("record error of %d bytes; want the last error whole", len(r.Error))
	}

	info, err = b.p.Enqueue(ctx, forq.Task{Type: "third"}, producer.WithQueue("h"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	r, err = b.p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != forq.StateSucceeded || r.Attempts != 3 || len(r.History) != 2 || r.History[0].Error != "not yet 1" || r.History[1].Error != "not yet 2" ||
		r.History[1].Attempt != 2 || r.History[0].At.After(r.History[1].At) {
		t.Errorf("record: %+v; want succeeded on attempt 3, with attempts 1 and 2's errors in order", r)
	}
}
