package record

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
)

// states are the states a record can be found in: none, forq's seven,
// and one forq does not know.
var states = []forq.State{None, forq.StateQueued, forq.StateRunning, forq.StateFailed,
	forq.StateSucceeded, forq.StateDead, forq.StateCanceled, forq.StateExpired, "bogus"}

// TestTable checks the rules the table of events must keep.
func TestTable(t *testing.T) {
	for e, tr := range Events {
		if tr.To != None && !known(tr.To) {
			t.Errorf("%s leads to %q, not a state", e, tr.To)
		}
		for _, s := range states {
			got := Allowed(e, s)
			// A final state is left only by a retry from the dead letters.
			if s.Final() && got != (e == Retry) {
				t.Errorf("Allowed(%s, %s) = %v: only %s leaves a final state", e, s, got, Retry)
			}
			// A worker can always write a task's progress or outcome
			// over a record of a task that may still run.
			if tr.Worker && !s.Final() && !got {
				t.Errorf("Allowed(%s, %s) = false: a worker must be able to write over a live record", e, s)
			}
			// A state forq does not know counts as no record.
			if !known(s) && got != Allowed(e, None) {
				t.Errorf("Allowed(%s, %q) = %v, but %v with no record", e, s, got, !got)
			}
		}
	}
	for e, want := range map[Event][]forq.State{
		// A running task is canceled by its worker (Drop), not over it.
		Cancel: {None, forq.StateQueued, forq.StateFailed, "bogus"},
		// Only a queued record of a task whose enqueue failed goes.
		Forget: {forq.StateQueued},
		// An enqueue keeps any record there already.
		Enqueue: {None, "bogus"},
	} {
		var got []forq.State
		for _, s := range states {
			if Allowed(e, s) {
				got = append(got, s)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s starts from %q, want %q", e, got, want)
		}
	}
	// Every state a worker writes is one worker event's, and one only.
	for _, s := range []forq.State{forq.StateQueued, forq.StateRunning, forq.StateSucceeded, forq.StateFailed, forq.StateDead, forq.StateCanceled, forq.StateExpired} {
		n := 0
		for _, tr := range Events {
			if tr.Worker && tr.To == s {
				n++
			}
		}
		if e, ok := WorkerEvent(s); !ok || n != 1 || Events[e].To != s {
			t.Errorf("WorkerEvent(%s) = %s, %v, with %d worker events leading there; want exactly one", s, e, ok, n)
		}
	}
	if e, ok := WorkerEvent(None); ok {
		t.Errorf("WorkerEvent(none) = %s; a worker never deletes a record", e)
	}
}

func store(t *testing.T) (Store, jetstream.KeyValue) {
	t.Helper()
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	h, err := topology.Ensure(t.Context(), js, topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return New(h.Results), h.Results
}

// put makes task id's record be in state s (None: no record) and returns
// it as stored and its revision.
func put(t *testing.T, kv jetstream.KeyValue, id string, s forq.State) (*forq.Result, uint64) {
	t.Helper()
	_ = kv.Purge(t.Context(), id)
	if s == None {
		return nil, 0
	}
	r := &forq.Result{ID: id, Queue: "q", Type: "x", State: s, Attempts: 1}
	b, _ := json.Marshal(r)
	rev, err := kv.Put(t.Context(), id, b)
	if err != nil {
		t.Fatal(err)
	}
	return r, rev
}

func stateOf(t *testing.T, s Store, id string) forq.State {
	t.Helper()
	r, _, err := s.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if r == nil {
		return None
	}
	return r.State
}

// TestSet applies every event to a record in every state, in a real
// bucket: what the table allows happens, what it does not is refused
// with ErrNotAllowed and leaves the record as it was.
func TestSet(t *testing.T) {
	s, kv := store(t)
	for e, tr := range Events {
		for _, from := range states {
			id := "t-" + strings.ReplaceAll(string(e), "-", "") + "-" + string(from)
			cur, rev := put(t, kv, id, from)
			var next *forq.Result
			if tr.To != None {
				next = &forq.Result{ID: id, Queue: "q", Type: "x", State: tr.To}
			}
			err := s.Set(t.Context(), e, id, cur, rev, next)
			want := tr.To
			if !Allowed(e, from) {
				want = from
				if !errors.Is(err, ErrNotAllowed) {
					t.Errorf("%s from %q: got %v, want ErrNotAllowed", e, from, err)
				}
			} else if err != nil {
				t.Errorf("%s from %q: %v", e, from, err)
			}
			if got := stateOf(t, s, id); got != want {
				t.Errorf("%s from %q: the record is %q, want %q", e, from, got, want)
			}
		}
	}
	// A record changed since it was read is a conflict.
	cur, rev := put(t, kv, "stale", forq.StateQueued)
	if _, err := kv.Put(t.Context(), "stale", []byte(`{"id":"stale","state":"running"}`)); err != nil {
		t.Fatal(err)
	}
	err := s.Set(t.Context(), Cancel, "stale", cur, rev, &forq.Result{ID: "stale", State: forq.StateCanceled})
	if !kvcas.IsConflict(err) || stateOf(t, s, "stale") != forq.StateRunning {
		t.Errorf("cancel of a record changed since: got %v, record %s; want a conflict, running", err, stateOf(t, s, "stale"))
	}
	// An event leads to its own state only.
	cur, rev = put(t, kv, "wrong", forq.StateQueued)
	if err := s.Set(t.Context(), Cancel, "wrong", cur, rev, &forq.Result{ID: "wrong", State: forq.StateSucceeded}); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("cancel to succeeded: got %v, want ErrNotAllowed", err)
	}
}

// TestWrite: a worker's write lands over a live record whatever revision
// it knew, keeps a final one, creates a missing one, and overwrites one
// that does not decode; a plain write puts whatever is there.
func TestWrite(t *testing.T) {
	s, kv := store(t)
	for _, from := range states {
		for _, rev0 := range []bool{false, true} {
			id := "w-" + string(from)
			_, rev := put(t, kv, id, from)
			if !rev0 {
				rev++ // a revision that is not the record's: another run wrote since
			}
			if rev0 {
				rev = 0
			}
			res := &forq.Result{ID: id, State: forq.StateSucceeded}
			out, err := s.Write(t.Context(), res, &rev, false)
			want, wantState := Written, forq.StateSucceeded
			if from.Final() {
				want, wantState = Kept, from
			}
			if err != nil || out != want {
				t.Errorf("succeed over %q (knowing revision 0: %v): got %v, %v; want %v", from, rev0, out, err, want)
			}
			if got := stateOf(t, s, id); got != wantState {
				t.Errorf("succeed over %q: the record is %q, want %q", from, got, wantState)
			}
			if out == Written {
				if e, err := kv.Get(t.Context(), id); err != nil || e.Revision() != rev {
					t.Errorf("succeed over %q: revision %d, want the record's, %v", from, rev, e)
				}
			}
		}
	}
	if _, err := kv.Put(t.Context(), "junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	var rev uint64
	if out, err := s.Write(t.Context(), &forq.Result{ID: "junk", State: forq.StateRunning}, &rev, false); out != Written || err != nil {
		t.Errorf("start over a malformed record: got %v, %v; want it written", out, err)
	}
	put(t, kv, "plain", forq.StateDead)
	rev = 0
	if out, err := s.Write(t.Context(), &forq.Result{ID: "plain", State: forq.StateFailed}, &rev, true); out != Written || err != nil || stateOf(t, s, "plain") != forq.StateFailed {
		t.Errorf("plain write: got %v, %v, state %s; want it put", out, err, stateOf(t, s, "plain"))
	}
}

// TestView: a queued record past its deadline reads as expired; no other.
func TestView(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		r    forq.Result
		want forq.State
	}{
		{forq.Result{State: forq.StateQueued, Deadline: now.Add(-time.Second)}, forq.StateExpired},
		{forq.Result{State: forq.StateQueued, Deadline: now.Add(time.Second)}, forq.StateQueued},
		{forq.Result{State: forq.StateQueued}, forq.StateQueued},
		{forq.Result{State: forq.StateRunning, Deadline: now.Add(-time.Second)}, forq.StateRunning},
	} {
		r := tc.r
		View(&r, now)
		if r.State != tc.want || (r.State == forq.StateExpired) != (r.Error == ExpiredError) {
			t.Errorf("View(%+v) = %s %q, want %s", tc.r, r.State, r.Error, tc.want)
		}
	}
}

// A result record is decoded, or refused as malformed, without a panic;
// one that decodes encodes to a record that decodes to the same.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"id":"a","queue":"default","type":"echo","state":"succeeded","attempts":1,"result":"aGk="}`))
	f.Add([]byte(`{"id":"a","state":"queued","deadline":"2001-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"state":"running","started_at":"2026-12-01T09:00:00.123456789+01:00","worker_pid":-1}`))
	f.Add([]byte(`{"state":"nonsense","attempts":-5,"result":"not base64"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Read("a", b)
		if err != nil {
			if !strings.Contains(err.Error(), "malformed record") || !errors.Is(err, ErrMalformed) {
				t.Fatalf("%q: error %q does not say the record is malformed", b, err)
			}
			return
		}
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%q decodes to %+v, which does not encode: %v", b, r, err)
		}
		r2, err := Read("a", enc)
		if err != nil {
			t.Fatalf("%q decodes and encodes to %s, which does not decode: %v", b, enc, err)
		}
		if enc2, _ := json.Marshal(r2); !bytes.Equal(enc, enc2) {
			t.Fatalf("%q: encodes to %s, then to %s", b, enc, enc2)
		}
	})
}

// TestStart: a worker's first start creates a missing record, updates a
// live one (a queued record made at enqueue), keeps a canceled one (a
// producer's Cancel made it before any worker started the task), and
// replaces another final one (an earlier task under the same ID).
func TestStart(t *testing.T) {
	s, kv := store(t)
	for _, from := range states {
		id := "s-" + string(from)
		put(t, kv, id, from)
		var rev uint64
		out, err := s.Start(t.Context(), &forq.Result{ID: id, State: forq.StateRunning}, &rev)
		want, wantState := Written, forq.StateRunning
		if from == forq.StateCanceled {
			want, wantState = Kept, from
		}
		if err != nil || out != want {
			t.Errorf("start over %q: got %v, %v; want %v", from, out, err, want)
		}
		if got := stateOf(t, s, id); got != wantState {
			t.Errorf("start over %q: the record is %q, want %q", from, got, wantState)
		}
		if out == Written {
			if e, err := kv.Get(t.Context(), id); err != nil || e.Revision() != rev {
				t.Errorf("start over %q: revision %d, want the record's, %v", from, rev, e)
			}
		}
	}
	// A deleted record (a forgotten enqueue) is created again.
	put(t, kv, "deleted", forq.StateQueued)
	if err := kv.Delete(t.Context(), "deleted"); err != nil {
		t.Fatal(err)
	}
	var rev uint64
	if out, err := s.Start(t.Context(), &forq.Result{ID: "deleted", State: forq.StateRunning}, &rev); out != Written || err != nil || stateOf(t, s, "deleted") != forq.StateRunning {
		t.Errorf("start over a deleted record: got %v, %v, state %s; want it written", out, err, stateOf(t, s, "deleted"))
	}
	rev = 0
	if _, err := s.Start(t.Context(), &forq.Result{ID: "x", State: forq.StateSucceeded}, &rev); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("start to succeeded: got %v, want ErrNotAllowed", err)
	}
}

// TestStartRacesCancel: a worker's start and a producer's cancel of a task
// that has no record, at once: exactly one of them makes the record, and
// a start that loses is told to keep it (the handler must not start).
func TestStartRacesCancel(t *testing.T) {
	s, _ := store(t)
	for i := range 50 {
		id := "race-" + strconv.Itoa(i)
		var (
			out            Outcome
			startErr, cErr error
			wg             sync.WaitGroup
		)
		wg.Go(func() {
			var rev uint64
			out, startErr = s.Start(t.Context(), &forq.Result{ID: id, State: forq.StateRunning}, &rev)
		})
		wg.Go(func() {
			cErr = s.Set(t.Context(), Cancel, id, nil, 0, &forq.Result{ID: id, State: forq.StateCanceled})
		})
		wg.Wait()
		if startErr != nil || cErr != nil && !kvcas.IsConflict(cErr) {
			t.Fatalf("%s: start %v, cancel %v", id, startErr, cErr)
		}
		canceled := cErr == nil
		if canceled == (out == Written) {
			t.Errorf("%s: cancel made the record: %v; start: %v; want exactly one", id, canceled, out)
		}
		want := forq.StateRunning
		if canceled {
			want = forq.StateCanceled
		}
		if got := stateOf(t, s, id); got != want {
			t.Errorf("%s: the record is %s, want %s", id, got, want)
		}
	}
}

// TestRunning: Running tells running and failed records as Store writes
// them without decoding; anything else, or bytes it does not know, are
// left to decode.
func TestRunning(t *testing.T) {
	for _, s := range states {
		b, _ := json.Marshal(&forq.Result{ID: "a", Queue: "q", Type: "t", State: s, Error: `"state":"running"`})
		want := s == forq.StateRunning || s == forq.StateFailed
		if got := Running(b); got != want {
			t.Errorf("Running(%s) = %v, want %v", b, got, want)
		}
	}
	// A free-text field cannot fake a state: its quotes are escaped.
	b, _ := json.Marshal(&forq.Result{ID: `x","state":"running`, State: forq.StateSucceeded})
	if Running(b) {
		t.Errorf("Running(%s) = true, want false", b)
	}
	for _, b := range []string{``, `{}`, `{"state": "running"}`, `{"state":"runningx"}`, `not json`} {
		if Running([]byte(b)) {
			t.Errorf("Running(%q) = true, want false", b)
		}
	}
}
