// Package record owns a task's result record in forq.BucketResults: its
// encoding, and every change of its state, by the producer (enqueue,
// cancel, a retry from the dead letters) and by workers (start, outcome,
// hand-back). The changes allowed are one table, Events; every write but
// a worker's plain put (see Store.Write) goes through it.
//
// The rule the table keeps: a record never moves back from a final state
// (succeeded, dead, canceled, expired), so the first final state stays,
// even when two runs of a task overlap (a broker restart no worker could
// fence, a worker frozen past its ack wait); only a retry from the dead
// letters, an explicit decision to run the task again, sets a final
// record back to queued. A record whose state forq does not know (or that
// does not decode) counts as no record.
package record

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// None is the state of a task that has no record.
const None forq.State = ""

// Event is what happens to a task that changes its record.
type Event string

// The events, by who makes them.
const (
	// Enqueue: the producer enqueued a task that asks for a record and
	// has a delay or a deadline (others get theirs at Start, or Cancel).
	Enqueue Event = "enqueue"
	// Forget: the producer's enqueue failed after the record was made.
	Forget Event = "forget"
	// Cancel: the producer asked to cancel a task that no worker runs.
	Cancel Event = "cancel"
	// Retry: the task was put back on its queue from the dead letters.
	Retry Event = "retry"

	// Start: a worker starts the task's handler (or a run alone).
	Start Event = "start"
	// Succeed: the handler returned nil.
	Succeed Event = "succeed"
	// Fail: an attempt failed; the task will be retried.
	Fail Event = "fail"
	// Die: the task used up its attempts and was dead-lettered.
	Die Event = "die"
	// Drop: a worker dropped a canceled task.
	Drop Event = "drop"
	// Expire: a worker received the task after its deadline.
	Expire Event = "expire"
	// HandBack: a worker handed the task back unfinished (a stop), or
	// its handler snoozed it (consumer.Snooze): queued again, no failure.
	HandBack Event = "hand-back"
)

// live are the states a task's record has while the task may still run.
var live = []forq.State{None, forq.StateQueued, forq.StateRunning, forq.StateFailed}

// final are the end states (forq.State.Final).
var final = []forq.State{forq.StateSucceeded, forq.StateDead, forq.StateCanceled, forq.StateExpired}

// Transition is one row of Events: event moves a record in one of the
// states From to state To (None: the record is deleted).
type Transition struct {
	From []forq.State
	To   forq.State
	// Worker is true for the events of workers, false for the producer's.
	Worker bool
}

// Events is the table of every change of a record's state: which states
// each event may start from, and the state it leads to.
var Events = map[Event]Transition{
	Enqueue: {From: []forq.State{None}, To: forq.StateQueued},
	Forget:  {From: []forq.State{forq.StateQueued}, To: None},
	// A running task's worker marks it canceled itself (Drop) when its
	// handler has returned.
	Cancel: {From: []forq.State{None, forq.StateQueued, forq.StateFailed}, To: forq.StateCanceled},
	Retry:  {From: final, To: forq.StateQueued},

	Start:    {From: live, To: forq.StateRunning, Worker: true},
	Succeed:  {From: live, To: forq.StateSucceeded, Worker: true},
	Fail:     {From: live, To: forq.StateFailed, Worker: true},
	Die:      {From: live, To: forq.StateDead, Worker: true},
	Drop:     {From: live, To: forq.StateCanceled, Worker: true},
	Expire:   {From: live, To: forq.StateExpired, Worker: true},
	HandBack: {From: live, To: forq.StateQueued, Worker: true},
}

// known reports whether s is one of forq's states.
func known(s forq.State) bool {
	switch s {
	case forq.StateQueued, forq.StateRunning, forq.StateSucceeded, forq.StateFailed, forq.StateDead, forq.StateCanceled, forq.StateExpired:
		return true
	}
	return false
}

// Allowed reports whether event e may change a record in state from (None
// for no record; a state forq does not know counts as None).
func Allowed(e Event, from forq.State) bool {
	if !known(from) {
		from = None
	}
	for _, s := range Events[e].From {
		if s == from {
			return true
		}
	}
	return false
}

// WorkerEvent returns the worker's event that leads to state to, and
// false if no worker event does.
func WorkerEvent(to forq.State) (Event, bool) {
	for e, tr := range Events {
		if tr.Worker && tr.To == to {
			return e, true
		}
	}
	return "", false
}

// ErrNotAllowed is wrapped by the error of a write that the table does not
// allow from the record's state.
var ErrNotAllowed = errors.New("record change not allowed")

// ErrMalformed is wrapped by the error of a read that found bytes that
// are not a record.
var ErrMalformed = errors.New("malformed record")

// Decode decodes the record of task id from b, as it is stored. The error
// wraps ErrMalformed.
func Decode(id string, b []byte) (*forq.Result, error) {
	var r forq.Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("result %s: %w: %w", id, ErrMalformed, err)
	}
	return &r, nil
}

// stateKey is how a record's state starts as Store writes it (forq.Result's
// JSON: its state comes before any field whose value could hold free
// text, and a quote inside a string value is escaped, so the first match
// is the state).
var stateKey = []byte(`"state":"`)

// Running reports, without decoding b, that b is a record in state running
// or failed: not final, and never read as final (see View). A waiter skips
// those updates of the records it watches, most of them, at the cost of a
// search of a few dozen bytes instead of a JSON decode. False means
// "decode it": another state, or bytes not written as Store writes them.
func Running(b []byte) bool {
	i := bytes.Index(b, stateKey)
	if i < 0 {
		return false
	}
	rest := b[i+len(stateKey):]
	return bytes.HasPrefix(rest, []byte(`running"`)) || bytes.HasPrefix(rest, []byte(`failed"`))
}

// Read decodes the record of task id from b as its readers see it now
// (see View). The error wraps ErrMalformed.
func Read(id string, b []byte) (*forq.Result, error) {
	r, err := Decode(id, b)
	if err != nil {
		return nil, err
	}
	View(r, time.Now())
	return r, nil
}

// View rewrites r as its readers (a waiter, a canceler) see it at now: a
// queued task past its deadline never started and never will (the broker
// drops it, or a worker that receives it late drops it as expired), so it
// reads as expired.
func View(r *forq.Result, now time.Time) {
	if r.State == forq.StateQueued && !r.Deadline.IsZero() && now.After(r.Deadline) {
		r.State, r.Error = forq.StateExpired, ExpiredError
	}
}

// ExpiredError is the error of a record View reads as expired.
const ExpiredError = "not started before its deadline"

// Store is the bucket of records. Its zero value is not usable; make one
// with New. It is a value: copying it is cheap.
type Store struct {
	kv jetstream.KeyValue
}

// New returns the Store on kv, a handle on forq.BucketResults.
func New(kv jetstream.KeyValue) Store { return Store{kv: kv} }

// Get returns the record of task id as it is stored, and its revision;
// nil and 0 when the task has none. A record that does not decode is
// returned as nil with its revision and an error wrapping ErrMalformed.
func (s Store) Get(ctx context.Context, id string) (*forq.Result, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	r, err := Decode(id, e.Value())
	return r, e.Revision(), err
}

// Set makes event e happen to the record of task id, which was cur at
// revision rev when read (cur nil, rev 0: there was none): it writes next
// (with Forget, which takes no next, it deletes the record), on the
// condition that the record has not changed since. The error wraps ErrNotAllowed when the table does
// not allow e from cur's state; it is a conflict (kvcas.IsConflict) when
// the record changed meanwhile.
func (s Store) Set(ctx context.Context, e Event, id string, cur *forq.Result, rev uint64, next *forq.Result) error {
	from := None
	if cur != nil {
		from = cur.State
	}
	tr, ok := Events[e]
	if !ok || !Allowed(e, from) {
		return fmt.Errorf("%w: %s from state %q", ErrNotAllowed, e, from)
	}
	if tr.To == None {
		return s.kv.Delete(ctx, id, jetstream.LastRevision(rev))
	}
	if next == nil || next.State != tr.To {
		return fmt.Errorf("%w: %s leads to state %s", ErrNotAllowed, e, tr.To)
	}
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if cur == nil {
		_, err = s.kv.Create(ctx, id, b)
	} else {
		_, err = s.kv.Update(ctx, id, b, rev)
	}
	return err
}

// CreateMsg returns the message that makes event e happen to the record
// of a task that has none (as Set with cur nil): a publish of next on the
// record's subject, on the condition that the key has no value. Publishing
// many such messages asynchronously makes many records in one round trip.
// A key that has a value, or a deleted one, refuses it as a conflict
// (kvcas.IsConflict): Set, which also creates over a deleted value, then
// decides. The error wraps ErrNotAllowed when the table does not allow e
// from no record.
func (s Store) CreateMsg(e Event, next *forq.Result) (*nats.Msg, error) {
	tr, ok := Events[e]
	if !ok || !Allowed(e, None) || tr.To == None {
		return nil, fmt.Errorf("%w: %s from no record", ErrNotAllowed, e)
	}
	if next == nil || next.State != tr.To {
		return nil, fmt.Errorf("%w: %s leads to state %s", ErrNotAllowed, e, tr.To)
	}
	b, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	return &nats.Msg{
		Subject: "$KV." + s.kv.Bucket() + "." + next.ID,
		Header:  nats.Header{jetstream.ExpectedLastSubjSeqHeader: []string{"0"}},
		Data:    b,
	}, nil
}

// Outcome is what a worker's Write did.
type Outcome int

// The outcomes of Write.
const (
	// Written: the record holds the worker's now.
	Written Outcome = iota
	// Kept: the record holds a state the write may not change (a final
	// one), which it kept.
	Kept
	// Failed: the broker refused the write or did not answer.
	Failed
)

// String returns "written", "kept" or "failed".
func (o Outcome) String() string {
	switch o {
	case Written:
		return "written"
	case Kept:
		return "kept"
	case Failed:
		return "failed"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// tries bounds Write's compare-and-set loop: each try that loses a race
// reads the record again.
const tries = 5

// Write writes res as its task's record for a worker, by the worker's
// event that leads to res.State (see WorkerEvent). rev is the revision of
// the record this delivery last wrote or read, 0 when unknown; it is
// updated.
//
// With plain set, res is put as it is, without a read or a condition: for
// a record no other writer is expected to have touched (a task that did
// not ask for a record, whose failures alone are recorded; the first
// delivery's start, before which no run can have ended). Otherwise it is
// a compare-and-set on rev, and a record found in a state the event may
// not change (a final one) is kept: Write returns Kept. That costs nothing
// on the common path: only a redelivery, or a write that finds another
// revision than its own, reads the record first.
func (s Store) Write(ctx context.Context, res *forq.Result, rev *uint64, plain bool) (Outcome, error) {
	e, ok := WorkerEvent(res.State)
	if !ok {
		return Failed, fmt.Errorf("%w: no worker's event leads to state %q", ErrNotAllowed, res.State)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return Failed, err
	}
	if plain {
		r, err := s.kv.Put(ctx, res.ID, b)
		if err != nil {
			return Failed, err
		}
		*rev = r
		return Written, nil
	}
	for range tries {
		if *rev == 0 {
			out, done, err := s.readForWrite(ctx, e, res.ID, b, rev)
			if done {
				return out, err
			}
			if *rev == 0 {
				continue // created meanwhile: read it
			}
		}
		r, err := s.kv.Update(ctx, res.ID, b, *rev)
		if err == nil {
			*rev = r
			return Written, nil
		}
		if !kvcas.IsConflict(err) {
			return Failed, err
		}
		*rev = 0 // another revision: another run wrote it, or a canceler
	}
	return Failed, errors.New("the record kept changing under this worker")
}

// Start writes res, in state running, as its task's record for a
// worker's first delivery of the task, when it knows no revision of the
// record (*rev is 0); rev is set to the revision written or read.
//
// A producer writes no record at enqueue for most recorded tasks (see
// producer.WithRecord): the worker's start makes it, with a create-only
// write (the key must have no value). That is what keeps a producer's
// Cancel exact: Cancel makes the record of a task that has none
// "canceled" with a create-only write too, so exactly one of the two
// creates wins. The start that loses reads the record: a canceled one is
// kept (Kept: the handler must not start); a live one (a queued record
// the producer made, for a task with a delay or a deadline) is updated
// with compare-and-set as Write does. Another final state is the record
// of an earlier task enqueued under the same ID past the broker's
// duplicate window (README: Duplicate window), and this delivery is a new
// task: its start replaces that record with a plain put, as a first
// delivery always did.
func (s Store) Start(ctx context.Context, res *forq.Result, rev *uint64) (Outcome, error) {
	if res.State != forq.StateRunning {
		return Failed, fmt.Errorf("%w: %s leads to state %s", ErrNotAllowed, Start, forq.StateRunning)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return Failed, err
	}
	r, err := s.kv.Create(ctx, res.ID, b)
	if err == nil {
		*rev = r
		return Written, nil
	}
	if !kvcas.IsConflict(err) {
		return Failed, err
	}
	cur, r, err := s.Get(ctx, res.ID)
	switch {
	case err != nil && !errors.Is(err, ErrMalformed):
		return Failed, err
	case cur != nil && cur.State == forq.StateCanceled:
		return Kept, nil
	case cur != nil && cur.State.Final():
		return s.Write(ctx, res, rev, true)
	}
	*rev = r // 0 if deleted meanwhile: Write reads it again
	return s.Write(ctx, res, rev, false)
}

// readForWrite reads the record for Write of event e, when the revision
// it last knew is lost: it creates the record (b) if there is none, or
// sets *rev to the record's revision for an update. done is true when
// Write is over with out and err; false when it should update (or, after
// a lost race to create, read again: *rev is still 0).
func (s Store) readForWrite(ctx context.Context, e Event, id string, b []byte, rev *uint64) (out Outcome, done bool, err error) {
	cur, r, err := s.Get(ctx, id)
	switch {
	case err != nil && !errors.Is(err, ErrMalformed):
		return Failed, true, err
	case err == nil && cur == nil:
		r, err := s.kv.Create(ctx, id, b)
		if kvcas.IsConflict(err) {
			return 0, false, nil // written meanwhile: read it
		}
		if err != nil {
			return Failed, true, err
		}
		*rev = r
		return Written, true, nil
	case cur != nil && !Allowed(e, cur.State):
		return Kept, true, nil
	}
	*rev = r
	return 0, false, nil
}
