package admin_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// dead is a queue "dq" whose worker fails each task permanently on its
// first run and succeeds on the next, with two dead letters: a (high
// priority, recorded) and c.
type dead struct {
	b      *bundle
	p      *producer.Producer
	a, c   string
	da, dc admin.DeadLetter
	mu     sync.Mutex
	runs   map[string]int
}

func setupDead(t *testing.T) *dead {
	t.Helper()
	d := &dead{b: setup(t), runs: map[string]int{}}
	d.p = d.b.producer(t)
	d.b.worker(t, "dq", 2, func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.runs[task.ID]++
		if d.runs[task.ID] == 1 {
			return nil, fmt.Errorf("first run of %s: %w", task.Payload, consumer.ErrPermanent)
		}
		return []byte("ok"), nil
	})
	d.a = enqueue(t, d.p, "a", producer.WithQueue("dq"), producer.WithRecord(), producer.WithPriority(forq.PriorityHigh))
	d.c = enqueue(t, d.p, "c", producer.WithQueue("dq"))
	var ds []admin.DeadLetter
	testutil.Eventually(t, 10*time.Second, func() bool {
		var err error
		ds, err = d.b.in.DeadLetters(t.Context(), "dq")
		return err == nil && len(ds) == 2
	}, "the two tasks were not dead-lettered")
	for _, l := range ds {
		switch l.ID {
		case d.a:
			d.da = l
		case d.c:
			d.dc = l
		}
	}
	return d
}

func (d *dead) ran(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.runs[id]
}

// Dead letters are listed with what the worker wrote, and found by task
// ID or sequence; references that name nothing are named in the error.
func TestDeadLetters(t *testing.T) {
	d := setupDead(t)
	ctx := t.Context()
	da := d.da
	got := fmt.Sprintf("%s %s %s attempts=%d payload=%s prio=%s", da.ID, da.Queue, da.Type, da.Attempts, da.Payload, da.Header.Get("Forq-Priority"))
	if want := d.a + " dq t attempts=1 payload=a prio=high"; got != want || !strings.Contains(da.Error, "first run of a") || da.Seq == 0 || da.Time.IsZero() {
		t.Errorf("dead letter of a: got %s (error %q, seq %d, time %s), want %s, its error, a sequence and a time", got, da.Error, da.Seq, da.Time, want)
	}
	if other, err := d.b.in.DeadLetters(ctx, "elsewhere"); err != nil || len(other) != 0 {
		t.Errorf("DeadLetters(elsewhere): %v, %v; want none", other, err)
	}
	found, err := d.b.in.FindDeadLetters(ctx, "", []string{d.a, strconv.FormatUint(d.dc.Seq, 10), d.a})
	if err != nil || len(found) != 2 || found[0].ID != d.a || found[1].ID != d.c {
		t.Errorf("FindDeadLetters(a, seq of c, a): %+v, %v; want a and c once each", found, err)
	}
	found, err = d.b.in.FindDeadLetters(ctx, "dq", []string{d.c, "nosuch", "999"})
	wantErr(t, "FindDeadLetters with unknown refs", err, admin.ErrDeadLetterNotFound, "nosuch", "999", "dq")
	if len(found) != 1 || found[0].ID != d.c {
		t.Errorf("FindDeadLetters with unknown refs returned %+v; want c's letter", found)
	}
	_, err = d.b.in.FindDeadLetters(ctx, "", nil)
	wantErr(t, "FindDeadLetters of nothing", err, admin.ErrDeadLetterNotFound)
}

// A retried letter runs again, its record back to queued on the way; a
// purged one is gone; doing either twice does no harm.
func TestRetryAndPurgeDead(t *testing.T) {
	d := setupDead(t)
	ctx := t.Context()
	info, err := d.b.in.RetryDead(ctx, d.da)
	if err != nil || info.AlreadyQueued || info.Sequence == 0 {
		t.Fatalf("RetryDead(a): %+v, %v", info, err)
	}
	r, err := d.p.Wait(ctx, d.a)
	if err != nil || r.State != forq.StateSucceeded || string(r.Result) != "ok" {
		t.Errorf("retried task: %+v, %v; want it succeeded", r, err)
	}
	// A second retry of the same letter finds it gone, and enqueues nothing.
	if _, err := d.b.in.RetryDead(ctx, d.da); err != nil {
		t.Errorf("second RetryDead(a): %v", err)
	}
	n, err := d.b.in.PurgeDead(ctx, []admin.DeadLetter{d.dc, d.dc})
	if err != nil || n != 1 {
		t.Errorf("PurgeDead(c, c): %d, %v; want 1", n, err)
	}
	if ds, err := d.b.in.DeadLetters(ctx, ""); err != nil || len(ds) != 0 {
		t.Errorf("after retry and purge: %+v, %v; want no dead letters", ds, err)
	}
	time.Sleep(200 * time.Millisecond)
	if a, c := d.ran(d.a), d.ran(d.c); a != 2 || c != 1 {
		t.Errorf("runs: a %d, c %d; want 2 and 1", a, c)
	}
}

// Letters that cannot go back are refused, named.
func TestRetryDeadRefusesBadLetters(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	_, err := b.in.RetryDead(ctx, admin.DeadLetter{Seq: 42, Queue: "dq"})
	if err == nil || !strings.Contains(err.Error(), "dead letter 42") {
		t.Errorf("RetryDead without an ID: %v; want an error naming letter 42", err)
	}
	_, err = b.in.RetryDead(ctx, admin.DeadLetter{Seq: 43, ID: "typeless", Queue: "dq"})
	if err == nil || !strings.Contains(err.Error(), "typeless") || !strings.Contains(err.Error(), "Forq-Type") {
		t.Errorf("RetryDead without a type: %v; want an error naming the task and %s", err, "Forq-Type")
	}
}

// Pause holds a queue's tasks until Resume; Paused says so; a queue
// without a consumer cannot be resumed.
func TestPauseResume(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	end, err := b.in.Pause(ctx, "pz", admin.PauseForever, 0)
	if err != nil || !end.Equal(admin.PauseForever) {
		t.Fatalf("Pause: %s, %v; want until %s", end, err, admin.PauseForever)
	}
	if paused, until, err := b.in.Paused(ctx, "pz"); err != nil || !paused || !until.Equal(admin.PauseForever) {
		t.Errorf("Paused: %v until %s, %v; want paused for ever", paused, until, err)
	}
	var ran sync.WaitGroup
	ran.Add(1)
	b.worker(t, "pz", 1, func(ctx context.Context, task *consumer.Task) ([]byte, error) { ran.Done(); return nil, nil })
	id := enqueue(t, p, "x", producer.WithQueue("pz"))
	time.Sleep(500 * time.Millisecond)
	if got, err := b.in.Tasks(ctx, "pz"); err != nil || len(got) != 1 || got[0].ID != id || got[0].State != admin.StateQueued {
		t.Errorf("task of the paused queue: %+v, %v; want it queued", got, err)
	}
	if err := b.in.Resume(ctx, "pz"); err != nil {
		t.Fatal(err)
	}
	ran.Wait()
	if paused, _, err := b.in.Paused(ctx, "pz"); err != nil || paused {
		t.Errorf("Paused after Resume: %v, %v", paused, err)
	}
	if err := b.in.Resume(ctx, "pz"); err != nil {
		t.Errorf("Resume of a queue not paused: %v", err)
	}
	soon := time.Now().Add(time.Minute)
	if end, err := b.in.Pause(ctx, "pz", soon, 0); err != nil || end.Sub(soon).Abs() > time.Second {
		t.Errorf("Pause for a minute: until %s, %v; want %s", end, err, soon)
	}

	_, err = b.in.Pause(ctx, "pz", time.Time{}, 0)
	wantErr(t, "Pause until the zero time", err, forq.ErrInvalidOption, "pz")
	_, err = b.in.Pause(ctx, "pz", soon, -time.Second)
	wantErr(t, "Pause with a negative ack wait", err, forq.ErrInvalidOption, "-1s")
	wantErr(t, "Resume of an unknown queue", b.in.Resume(ctx, "nope"), admin.ErrNoQueue, "nope")
	_, _, err = b.in.Paused(ctx, "nope")
	wantErr(t, "Paused of an unknown queue", err, admin.ErrNoQueue, "nope")
}

// SetRecordAll makes workers record a task enqueued without a record, and
// Stats shows it; off stops it.
func TestSetRecordAll(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	if err := b.in.SetRecordAll(ctx, "rq", true); err != nil {
		t.Fatal(err)
	}
	if st, err := b.in.Stats(ctx, "rq"); err != nil || !st.Queues[0].RecordAll {
		t.Errorf("Stats after SetRecordAll(on): %+v, %v", st, err)
	}
	b.worker(t, "rq", 1, func(ctx context.Context, task *consumer.Task) ([]byte, error) { return []byte("done"), nil })
	id := enqueue(t, p, "x", producer.WithQueue("rq"))
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := p.Result(ctx, id)
		return err == nil && r.State == forq.StateSucceeded
	}, "a task enqueued without a record was not recorded")
	if err := b.in.SetRecordAll(ctx, "rq", false); err != nil {
		t.Fatal(err)
	}
	if st, err := b.in.Stats(ctx, "rq"); err != nil || st.Queues[0].RecordAll {
		t.Errorf("Stats after SetRecordAll(off): %+v, %v", st, err)
	}
}
