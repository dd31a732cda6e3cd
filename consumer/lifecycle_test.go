package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
)

// runOne enqueues a task of type "t" on queue and waits until w ran it:
// w's Run has started for sure.
func runOne(t *testing.T, b *bundle, queue string, ran <-chan struct{}) {
	t.Helper()
	if _, err := b.p.Enqueue(t.Context(), forq.Task{Queue: queue, Type: "t"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not run its task")
	}
}

// A Worker runs once: two Runs at once, a Run while one runs and a Run
// after it returned all get ErrAlreadyStarted at once, and the Run that
// started is not disturbed.
func TestRunTwiceIsAnError(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"once"}})
	ran := make(chan struct{}, 10)
	w.HandleFunc("t", func(context.Context, *consumer.Task) ([]byte, error) { ran <- struct{}{}; return nil, nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- w.Run(ctx) }()
	}
	select {
	case err := <-errs:
		if !errors.Is(err, consumer.ErrAlreadyStarted) {
			t.Fatalf("one of two Runs at once returned %v, want ErrAlreadyStarted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("neither of two Runs at once returned")
	}
	runOne(t, b, "once", ran)
	if err := w.Run(ctx); !errors.Is(err, consumer.ErrAlreadyStarted) {
		t.Fatalf("Run while running = %v, want ErrAlreadyStarted", err)
	}
	runOne(t, b, "once", ran) // the first Run still works
	cancel()
	if err := <-errs; err != nil {
		t.Fatalf("the Run that started returned %v, want nil", err)
	}
	if err := w.Run(context.Background()); !errors.Is(err, consumer.ErrAlreadyStarted) {
		t.Fatalf("Run after Run returned = %v, want ErrAlreadyStarted", err)
	}
}

// handlePanic calls Handle and returns what it panicked with, "" if it
// did not.
func handlePanic(w *consumer.Worker, typ string) (msg string) {
	defer func() {
		if p := recover(); p != nil {
			msg = fmt.Sprint(p)
		}
	}()
	w.HandleFunc(typ, func(context.Context, *consumer.Task) ([]byte, error) { return nil, nil })
	return ""
}

// Handle after Run started panics with a clear message, and does not
// register the handler; Handle racing with the start of Run either
// registers before it or panics (run with -race: no data race).
func TestHandleAfterRunPanics(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"late"}})
	ran := make(chan struct{}, 10)
	w.HandleFunc("t", func(context.Context, *consumer.Task) ([]byte, error) { ran <- struct{}{}; return nil, nil })
	var racing sync.WaitGroup
	racing.Go(func() {
		for i := range 1000 {
			if msg := handlePanic(w, fmt.Sprintf("racer-%d", i)); msg != "" {
				return
			}
		}
	})
	start(t, w)
	racing.Wait()
	runOne(t, b, "late", ran)
	msg := handlePanic(w, "late")
	if !strings.Contains(msg, `Handle("late") called after Run`) {
		t.Fatalf("Handle after Run panicked with %q, want it to name the type and Run", msg)
	}
	for _, typ := range w.Types() {
		if typ == "late" {
			t.Fatalf("Handle after Run registered its handler: types %v", w.Types())
		}
	}
}
