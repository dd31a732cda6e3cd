package producer_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go/jetstream"
)

// Every rule of a task's settings gives one error whichever way the value
// was given, as a field of forq.Task or as an Option, through Enqueue and
// through EnqueueMany; and nothing is enqueued.
func TestOptionRulesOneErrorEitherWay(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	past, soon, later := now.Add(-time.Hour), now.Add(time.Hour), now.Add(2*time.Hour)
	for _, tc := range []struct {
		name string
		// field is the task with the value as a field; opts give it
		// to a task with none (nil: the rule has no option).
		field forq.Task
		opts  []producer.Option
		want  error
		// sameText: the two ways give the same message (false where the
		// message names a time computed at the enqueue).
		sameText bool
	}{
		{"queue", forq.Task{Queue: "a.b"}, []producer.Option{producer.WithQueue("a.b")}, forq.ErrInvalidQueue, true},
		{"type", forq.Task{Type: "a b"}, nil, forq.ErrInvalidTask, true},
		{"id", forq.Task{ID: "a.b"}, []producer.Option{producer.WithID("a.b")}, forq.ErrInvalidTask, true},
		{"priority", forq.Task{Priority: 7}, []producer.Option{producer.WithPriority(7)}, forq.ErrInvalidTask, true},
		{"negative max attempts", forq.Task{MaxAttempts: -1}, []producer.Option{producer.WithMaxAttempts(-1)}, forq.ErrInvalidTask, true},
		{"negative timeout", forq.Task{Timeout: -time.Second}, []producer.Option{producer.WithTimeout(-time.Second)}, forq.ErrInvalidTask, true},
		{"lock key", forq.Task{LockKey: "a\x00"}, []producer.Option{producer.WithLock("a\x00")}, forq.ErrInvalidTask, true},
		{"unique key", forq.Task{UniqueKey: "a\nb"}, []producer.Option{producer.WithUnique("a\nb")}, forq.ErrInvalidTask, true},
		{"deadline passed", forq.Task{Deadline: past}, []producer.Option{producer.WithDeadline(past)}, forq.ErrInvalidTask, true},
		{"expiry passed", forq.Task{Deadline: past}, []producer.Option{producer.WithExpiresIn(-time.Second)}, forq.ErrInvalidTask, false},
		{"negative delay", forq.Task{Delay: -time.Second}, []producer.Option{producer.WithDelay(-time.Second)}, forq.ErrInvalidTask, true},
		{"delay and time", forq.Task{Delay: time.Second, At: soon}, []producer.Option{producer.WithDelay(time.Second), producer.WithAt(soon)}, forq.ErrInvalidTask, true},
		{"deadline before time", forq.Task{At: later, Deadline: soon}, []producer.Option{producer.WithAt(later), producer.WithDeadline(soon)}, forq.ErrInvalidTask, true},
		{"deadline before delay", forq.Task{Delay: 2 * time.Hour, Deadline: soon}, []producer.Option{producer.WithDelay(2 * time.Hour), producer.WithDeadline(soon)}, forq.ErrInvalidTask, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			field := tc.field
			if field.Type == "" {
				field.Type = "t"
			}
			var errs []error
			_, err := p.Enqueue(t.Context(), field)
			errs = append(errs, err)
			_, err = p.EnqueueMany(t.Context(), []forq.Task{field})
			errs = append(errs, err)
			if tc.opts != nil {
				_, err = p.Enqueue(t.Context(), forq.Task{Type: "t"}, tc.opts...)
				errs = append(errs, err)
				_, err = p.EnqueueMany(t.Context(), []forq.Task{{Type: "t"}}, tc.opts...)
				errs = append(errs, err)
			}
			for i, err := range errs {
				if !errors.Is(err, tc.want) || !errors.Is(err, forq.ErrInvalidOption) {
					t.Fatalf("way %d: got %v, want an error wrapping %v (and so %v)", i, err, tc.want, forq.ErrInvalidOption)
				}
				// Through EnqueueMany the message names the task's index.
				msg := strings.TrimPrefix(err.Error(), "task 0: ")
				if first := strings.TrimPrefix(errs[0].Error(), "task 0: "); tc.sameText && msg != first {
					t.Errorf("way %d: got %q, want the same error as the field gives, %q", i, msg, first)
				}
			}
		})
	}

	// An option given its zero value is an error of the option, not of
	// the task: the same zero as a field means the default.
	for _, tc := range []struct {
		opt  producer.Option
		name string
	}{
		{producer.WithID(""), "WithID"},
		{producer.WithQueue(""), "WithQueue"},
		{producer.WithMaxAttempts(0), "WithMaxAttempts"},
		{producer.WithTimeout(0), "WithTimeout"},
		{producer.WithLock(""), "WithLock"},
		{producer.WithUnique(""), "WithUnique"},
		{producer.WithDeadline(time.Time{}), "WithDeadline"},
		{producer.WithExpiresIn(0), "WithExpiresIn"},
		{producer.WithDelay(0), "WithDelay"},
		{producer.WithAt(time.Time{}), "WithAt"},
	} {
		_, err := p.Enqueue(t.Context(), forq.Task{Type: "t"}, tc.opt)
		if !errors.Is(err, forq.ErrInvalidOption) || errors.Is(err, forq.ErrInvalidTask) || !strings.Contains(err.Error(), tc.name+"(") {
			t.Errorf("%s of zero: got %v, want an error naming %s wrapping only forq.ErrInvalidOption", tc.name, err, tc.name)
		}
	}
	if _, err := p.Enqueue(t.Context(), forq.Task{Type: "t"}); err != nil {
		t.Fatalf("a task of zero fields: %v", err)
	}
	js, _ := jetstream.New(nc)
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("stream holds %d messages, want 1: only the valid task", n)
	}
}

// An option overrides the task's field; of WithDeadline and WithExpiresIn
// the last one counts; options apply to every task of EnqueueMany.
func TestOptionsOverrideFields(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dl := time.Now().Add(time.Hour).Truncate(time.Second)
	info, err := p.Enqueue(t.Context(), forq.Task{Type: "t", Queue: "a", Timeout: time.Second, Record: true},
		producer.WithQueue("b"), producer.WithTimeout(time.Minute), producer.WithExpiresIn(time.Minute), producer.WithDeadline(dl))
	if err != nil {
		t.Fatal(err)
	}
	if info.Queue != "b" {
		t.Errorf("queue: got %s, want b", info.Queue)
	}
	r, err := p.Result(t.Context(), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Deadline.Equal(dl) {
		t.Errorf("deadline: got %s, want %s (WithDeadline, given last)", r.Deadline, dl)
	}
	infos, err := p.EnqueueMany(t.Context(), []forq.Task{{Type: "t"}, {Type: "t", Queue: "a"}}, producer.WithQueue("c"))
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range infos {
		if in.Queue != "c" {
			t.Errorf("task %d: queue %s, want c", i, in.Queue)
		}
	}
}
