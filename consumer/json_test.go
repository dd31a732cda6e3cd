package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/producer"
)

// resize is a typed payload of the tests.
type resize struct {
	Path  string `json:"path"`
	Width int    `json:"width"`
}

func (resize) Kind() string { return "resize" }

// A value enqueued with EnqueueJSON reaches a HandleJSON handler as the
// same value, under the type its Kind names; a payload that does not
// decode into it fails permanently at once, with an error naming the task
// type, the Go type and the JSON error, and the handler never runs.
func TestJSONHelpers(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"img"}, RetryBase: 10 * time.Millisecond})
	got := make(chan resize, 1)
	var calls atomic.Int64
	consumer.HandleJSON(w, func(ctx context.Context, task *consumer.Task, r resize) ([]byte, error) {
		calls.Add(1)
		if task.Type != "resize" {
			t.Errorf("task type %q, want resize", task.Type)
		}
		got <- r
		return []byte("ok"), nil
	})
	if types := w.Types(); len(types) != 1 || types[0] != "resize" {
		t.Fatalf("types %v, want [resize]", types)
	}
	start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	want := resize{Path: "a.png", Width: 640}
	info, err := b.p.EnqueueJSON(ctx, want, producer.WithQueue("img"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != forq.StateSucceeded || string(r.Result) != "ok" || r.Type != "resize" {
		t.Fatalf("result %+v, want succeeded with ok, type resize", r)
	}
	if v := <-got; v != want {
		t.Errorf("handler got %+v, want %+v", v, want)
	}

	for _, tc := range []struct{ payload, jsonErr string }{
		{`{"path": "a.png", "width": "wide"}`, "cannot unmarshal string"},
		{`not json`, "invalid character"},
		{``, "unexpected end of JSON input"},
	} {
		info, err := b.p.Enqueue(ctx, forq.Task{Type: "resize", Payload: []byte(tc.payload)},
			producer.WithQueue("img"), producer.WithRecord(), producer.WithMaxAttempts(5))
		if err != nil {
			t.Fatal(err)
		}
		r, err := b.p.Wait(ctx, info.ID)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != forq.StateDead || r.Attempts != 1 {
			t.Errorf("payload %q: state %s after %d attempts, want dead after 1 (not retried)", tc.payload, r.State, r.Attempts)
		}
		for _, s := range []string{consumer.ErrPermanent.Error(), `task type "resize"`, "consumer_test.resize", tc.jsonErr} {
			if !strings.Contains(r.Error, s) {
				t.Errorf("payload %q: error %q does not say %q", tc.payload, r.Error, s)
			}
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1: never for a payload that does not decode", n)
	}
	letters := deadMsgs(t, b, "img", 3)
	if e := letters[0].Header.Get("Forq-Error"); !strings.Contains(e, "consumer_test.resize") {
		t.Errorf("dead letter's error %q does not name the Go type", e)
	}
}

// The handler JSONHandler returns gives the JSON error to errors.As and
// ErrPermanent to errors.Is.
func TestJSONHandlerErrorWraps(t *testing.T) {
	h := consumer.JSONHandler(func(ctx context.Context, task *consumer.Task, r resize) ([]byte, error) {
		return nil, nil
	})
	_, err := h.Handle(t.Context(), &consumer.Task{Type: "resize", Payload: []byte(`{"width": []}`)})
	if !errors.Is(err, consumer.ErrPermanent) {
		t.Errorf("got %v, want an error wrapping ErrPermanent", err)
	}
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) || typeErr.Field != "width" {
		t.Errorf("got %v, want it to wrap the JSON error about field width", err)
	}
}

// ptrKind's Kind has a value receiver: called on a nil *ptrKind, it
// panics.
type ptrKind struct{ N int }

func (p ptrKind) Kind() string { return "ptr" }

type badKind struct{}

func (badKind) Kind() string { return "two words" }

// HandleJSON refuses, with a panic that says why, a type whose Kind cannot
// be called on its zero value, or names no valid task type.
func TestHandleJSONBadKinds(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{})
	for name, reg := range map[string]func(){
		"pointer": func() {
			consumer.HandleJSON(w, func(context.Context, *consumer.Task, *ptrKind) ([]byte, error) { return nil, nil })
		},
		"invalid type": func() {
			consumer.HandleJSON(w, func(context.Context, *consumer.Task, badKind) ([]byte, error) { return nil, nil })
		},
	} {
		msg := func() (msg string) {
			defer func() { msg, _ = recover().(string) }()
			reg()
			return ""
		}()
		if !strings.Contains(msg, "consumer:") || (name == "pointer" && !strings.Contains(msg, "value receiver")) {
			t.Errorf("%s: panic %q, want one from consumer that says why", name, msg)
		}
	}
}
