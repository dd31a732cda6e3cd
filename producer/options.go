package producer

import (
	"fmt"
	"time"

	"github.com/forqhq/forq"
)

// Option sets one of a task's settings for Enqueue or EnqueueMany, over
// the task's field of the same name (WithTimeout over forq.Task.Timeout).
// Options only record what they are given: the task, with the options
// applied, is checked once by forq.Task.Validate, so a value breaks the
// same rule with the same error (wrapping forq.ErrInvalidTask or
// forq.ErrInvalidQueue) whichever way it was given. An option given its
// zero value (WithTimeout(0), WithUnique("")) sets nothing a field could
// not, and is an error wrapping forq.ErrInvalidOption: leave it out for
// the default.
type Option func(*options)

// options are the settings an enqueue's Options give, each with whether
// it was given.
type options struct {
	id, queue, lockKey, uniqueKey opt[string]
	maxAttempts                   opt[int]
	timeout, delay, expiresIn     opt[time.Duration]
	at, deadline                  opt[time.Time]
	priority                      opt[forq.Priority]
	record                        bool
}

// opt is one setting of options: its value, and whether an Option gave it.
type opt[T comparable] struct {
	v  T
	ok bool
}

func set[T comparable](v T) opt[T] { return opt[T]{v: v, ok: true} }

// to writes the setting into *dst if it was given.
func (o opt[T]) to(dst *T) {
	if o.ok {
		*dst = o.v
	}
}

// given is the rule of an option given its zero value: it sets nothing
// that leaving it out would not (or, for a key, asks for nothing), so it is
// more likely a caller's bug than a wish.
func given[T comparable](name string, o opt[T], leaveOut string) error {
	var zero T
	if o.ok && o.v == zero {
		return fmt.Errorf("%w: %s(%v): leave the option out for %s", forq.ErrInvalidOption, name, zeroString(o.v), leaveOut)
	}
	return nil
}

func zeroString(v any) string {
	switch v := v.(type) {
	case string:
		return `""`
	case time.Time:
		return "time.Time{}"
	default:
		return fmt.Sprint(v)
	}
}

// collect applies opts to a new options.
func collect(opts []Option) *options {
	o := &options{}
	for _, f := range opts {
		f(o)
	}
	return o
}

// check reports the first option given its zero value.
func (o *options) check() error {
	for _, err := range []error{
		given("WithID", o.id, "a new ID"),
		given("WithQueue", o.queue, "the task's queue (forq.DefaultQueue if none)"),
		given("WithMaxAttempts", o.maxAttempts, "forq.DefaultMaxAttempts"),
		given("WithTimeout", o.timeout, "no timeout"),
		given("WithLock", o.lockKey, "no lock"),
		given("WithUnique", o.uniqueKey, "no unique key"),
		given("WithDeadline", o.deadline, "no deadline"),
		given("WithExpiresIn", o.expiresIn, "no deadline"),
		given("WithDelay", o.delay, "no delay"),
		given("WithAt", o.at, "no delay"),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// apply writes the settings given into t, then checks t (see Option).
func (o *options) apply(t *forq.Task) error {
	if err := o.check(); err != nil {
		return err
	}
	o.id.to(&t.ID)
	o.queue.to(&t.Queue)
	o.maxAttempts.to(&t.MaxAttempts)
	o.timeout.to(&t.Timeout)
	o.lockKey.to(&t.LockKey)
	o.uniqueKey.to(&t.UniqueKey)
	o.priority.to(&t.Priority)
	o.deadline.to(&t.Deadline)
	if o.expiresIn.ok {
		t.Deadline = time.Now().Add(o.expiresIn.v)
	}
	o.delay.to(&t.Delay)
	o.at.to(&t.At)
	t.Record = t.Record || o.record
	return t.Validate()
}

// WithQueue sends the task to queue.
func WithQueue(queue string) Option {
	return func(o *options) { o.queue = set(queue) }
}

// WithMaxAttempts lets the task run at most n times (n ≥ 1).
func WithMaxAttempts(n int) Option {
	return func(o *options) { o.maxAttempts = set(n) }
}

// WithTimeout bounds each attempt of the task to d (d > 0).
func WithTimeout(d time.Duration) Option {
	return func(o *options) { o.timeout = set(d) }
}

// WithID gives the task its ID, e.g. one derived from the work so that a
// retried enqueue is dropped as a duplicate (see forq.ValidateID).
func WithID(id string) Option {
	return func(o *options) { o.id = set(id) }
}

// WithDeadline makes the task expire if no worker has started it by t:
// the broker drops it and it ends in state expired without running. t
// must be in the future. The last of WithDeadline and WithExpiresIn
// counts.
func WithDeadline(t time.Time) Option {
	return func(o *options) { o.deadline, o.expiresIn = set(t), opt[time.Duration]{} }
}

// WithExpiresIn makes the task expire if no worker has started it within
// d (d > 0) of its enqueue. The last of WithDeadline and WithExpiresIn
// counts.
func WithExpiresIn(d time.Duration) Option {
	return func(o *options) { o.expiresIn, o.deadline = set(d), opt[time.Time]{} }
}

// WithPriority sets the task's priority level within its queue: workers
// start high tasks before normal ones, and normal ones before low ones.
// forq.ParsePriority reads a level from a string.
func WithPriority(p forq.Priority) Option {
	return func(o *options) { o.priority = set(p) }
}

// WithRecord asks workers to record the task's state and result so that
// Wait and Result can find it.
//
// The record is made when a worker starts the task (state running), or
// when the task is canceled before that; until then Result returns an
// error wrapping forq.ErrResultNotFound, and Wait and WaitMany wait. A
// task with a delay or a deadline is recorded as queued as it is
// enqueued (the record says when it is due, or reads as expired past its
// deadline).
func WithRecord() Option {
	return func(o *options) { o.record = true }
}

// WithLock gives the task a lock key: tasks with the same lock key never
// run at the same time, on any worker. A task whose lock is busy waits in
// the queue; waiting does not use up its attempts.
func WithLock(key string) Option {
	return func(o *options) { o.lockKey = set(key) }
}

// WithUnique gives the task a unique key: while a task with the key is
// queued or running, Enqueue does not enqueue another one, and returns the
// existing task's ID with Info.Duplicate set. Unlike a task ID, which the
// broker de-duplicates only within its duplicate window, a unique key
// holds for as long as its task lives (see unique.go).
func WithUnique(key string) Option {
	return func(o *options) { o.uniqueKey = set(key) }
}

// WithDelay makes the task a delayed one: the broker queues it d after the
// enqueue (d > 0), measured by the broker's clock, not the producer's. Not
// with WithAt (or a task's At). It needs nats-server 2.12 or later: on an
// older one the enqueue fails with forq.ErrServerTooOld.
func WithDelay(d time.Duration) Option {
	return func(o *options) { o.delay = set(d) }
}

// WithAt makes the task a delayed one: the broker queues it at t, by the
// broker's clock. A time already past queues it at once. Not with
// WithDelay (or a task's Delay). Like WithDelay, it needs nats-server 2.12
// or later.
func WithAt(at time.Time) Option {
	return func(o *options) { o.at = set(at) }
}
