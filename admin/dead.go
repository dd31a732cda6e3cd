package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrDeadLetterNotFound is wrapped by the errors of FindDeadLetters for a
// reference that names no dead letter.
var ErrDeadLetterNotFound = errors.New("dead letter not found")

// DeadLetter is a task in forq.StreamDead: one that used up its attempts
// (or failed permanently, or had no handler on any worker).
type DeadLetter struct {
	// Seq is the letter's sequence number in forq.StreamDead.
	Seq uint64 `json:"seq"`
	// ID is the task's ID.
	ID string `json:"id"`
	// Queue is the queue the task died in.
	Queue string `json:"queue"`
	// Type is the task's type.
	Type string `json:"type"`
	// Attempts is how many attempts the task made.
	Attempts int `json:"attempts"`
	// Error is the last attempt's error.
	Error string `json:"error"`
	// Time is when the task was dead-lettered (the broker's clock).
	Time time.Time `json:"time"`
	// Header is the letter's headers: the task's, and the dead-letter
	// ones (Forq-Error, Forq-Attempts, Forq-Queue).
	Header nats.Header `json:"headers"`
	// Payload is the task's payload, never nil.
	Payload []byte `json:"payload"`
}

// deadStream returns forq.StreamDead, or nil if it does not exist yet.
func (in *Inspector) deadStream(ctx context.Context) (jetstream.Stream, error) {
	return in.stream(ctx, forq.StreamDead)
}

// DeadLetters returns the dead letters of queue ("" for every queue), in
// the order they died. A queue with no dead letter, known or not, has an
// empty list. A bad queue name is an error wrapping forq.ErrInvalidQueue.
func (in *Inspector) DeadLetters(ctx context.Context, queue string) ([]DeadLetter, error) {
	subject := forq.SubjectDeadPrefix + ">"
	if queue != "" {
		if err := forq.ValidateQueue(queue); err != nil {
			return nil, err
		}
		subject = wire.DeadSubject(queue)
	}
	dead, err := in.deadStream(ctx)
	if err != nil || dead == nil {
		return []DeadLetter{}, err
	}
	info, err := dead.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", forq.StreamDead, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	if n == 0 {
		return []DeadLetter{}, nil
	}
	// FORQ_DEAD keeps its messages (limits retention), so an ordered
	// consumer may read them.
	cons, err := dead.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", forq.StreamDead, err)
	}
	out := make([]DeadLetter, 0, n)
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", forq.StreamDead, err)
		}
		got, last := 0, false
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", forq.StreamDead, err)
			}
			out = append(out, letter(md.Sequence.Stream, m.Subject(), md.Timestamp, m.Headers(), m.Data()))
			last = md.NumPending == 0
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("read %s: %w", forq.StreamDead, err)
		}
		if last || got == 0 {
			return out, nil
		}
	}
}

// letter reads a dead letter from its message (see wire.DecodeDead).
func letter(seq uint64, subject string, ts time.Time, h nats.Header, data []byte) DeadLetter {
	l := wire.DecodeDead(subject, h)
	d := DeadLetter{
		Seq: seq, ID: l.ID, Queue: l.Queue, Type: l.Type, Attempts: l.Attempts,
		Error: l.Error, Time: ts.UTC(), Header: h, Payload: data,
	}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	return d
}

// FindDeadLetters resolves refs, each a task ID or a sequence number in
// forq.StreamDead, among the dead letters of queue ("" for all). A task ID
// matches every dead letter of that task; an ID that is all digits is
// taken as an ID first, then as a sequence number. The error wraps
// ErrDeadLetterNotFound and names every ref that matched nothing; the
// letters that were found are returned with it.
func (in *Inspector) FindDeadLetters(ctx context.Context, queue string, refs []string) ([]DeadLetter, error) {
	if len(refs) == 0 {
		return nil, fmt.Errorf("%w: no task ID or sequence given", ErrDeadLetterNotFound)
	}
	all, err := in.DeadLetters(ctx, queue)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	taken := map[uint64]bool{}
	var missing []string
	for _, ref := range refs {
		found := false
		for _, d := range matchLetters(all, ref) {
			found = true
			if !taken[d.Seq] {
				out, taken[d.Seq] = append(out, d), true
			}
		}
		if !found {
			missing = append(missing, ref)
		}
	}
	if len(missing) > 0 {
		where := "in " + forq.StreamDead
		if queue != "" {
			where = "in queue " + queue + "'s dead letters"
		}
		return out, fmt.Errorf("%w: no task ID or sequence %s %s", ErrDeadLetterNotFound, strings.Join(missing, ", "), where)
	}
	return out, nil
}

// matchLetters returns the letters of all that ref names: those of task
// ID ref, else the one of sequence ref.
func matchLetters(all []DeadLetter, ref string) []DeadLetter {
	var out []DeadLetter
	for _, d := range all {
		if d.ID == ref {
			out = append(out, d)
		}
	}
	if len(out) > 0 {
		return out
	}
	if seq, err := strconv.ParseUint(ref, 10, 64); err == nil {
		for _, d := range all {
			if d.Seq == seq {
				out = append(out, d)
			}
		}
	}
	return out
}

// RetryInfo says what RetryDead did with a dead letter.
type RetryInfo struct {
	// Sequence of the task in forq.StreamTasks.
	Sequence uint64
	// AlreadyQueued is true when the task was found in its queue already
	// (an earlier retry that was interrupted before it removed the letter);
	// it was not enqueued a second time.
	AlreadyQueued bool
}

// RetryDead puts dead letter d back on its queue as it was enqueued: same
// task ID, type, payload and Forq-* headers, with its attempts reset (it is
// a new message, delivered for the first time). Only once the
// broker has stored the task again is the dead letter deleted, so a
// failure anywhere loses nothing; retrying a letter whose task is already
// back in its queue only deletes the letter. A recorded result goes back
// to queued, attempts 0. A letter with no ID, no type or a bad queue is an
// error naming it.
func (in *Inspector) RetryDead(ctx context.Context, d DeadLetter) (*RetryInfo, error) {
	// Back to its priority level, with its ID and Forq-* headers.
	m, err := wire.Retry(d.ID, d.Queue, d.Seq, d.Header, d.Payload)
	if err != nil {
		return nil, err
	}
	h, err := in.declare(ctx)
	if err != nil {
		return nil, fmt.Errorf("retry %s: %w", d.ID, err)
	}
	// The record as it is before the publish: only that revision is set
	// back to queued, so a worker that has already started the task keeps
	// its fresher state.
	records := record.New(h.Results)
	rec, rev, err := records.Get(ctx, d.ID)
	if err != nil && !errors.Is(err, record.ErrMalformed) {
		return nil, fmt.Errorf("retry %s: record: %w", d.ID, err)
	}
	ack, err := in.js.PublishMsg(ctx, m, jetstream.WithExpectStream(forq.StreamTasks))
	if err != nil {
		return nil, fmt.Errorf("retry %s: enqueue: %w", d.ID, err)
	}
	// A duplicate is an earlier retry of this letter that was cut off
	// before it deleted the letter: the task is queued already.
	info := &RetryInfo{Sequence: ack.Sequence, AlreadyQueued: ack.Duplicate}
	if rec != nil && !info.AlreadyQueued {
		// Only a final record goes back to queued (record.Retry); one
		// that changed meanwhile is a worker's, fresher.
		record.View(rec, time.Now())
		queued := forq.Result{ID: d.ID, Queue: d.Queue, Type: wire.Type(m.Header), State: forq.StateQueued}
		err := records.Set(ctx, record.Retry, d.ID, rec, rev, &queued)
		if err != nil && !errors.Is(err, record.ErrNotAllowed) && !kvcas.IsConflict(err) {
			return info, fmt.Errorf("retry %s: re-enqueued, but its record still says %s: %w", d.ID, rec.State, err)
		}
	}
	if _, err := deleteLetter(ctx, h.Dead, d.Seq); err != nil {
		return info, fmt.Errorf("retry %s: re-enqueued, but its dead letter %d stays: %w", d.ID, d.Seq, err)
	}
	return info, nil
}

// PurgeDead deletes dead letters for good and returns how many it
// deleted; a letter gone already (retried or purged meanwhile) is not
// counted and not an error.
func (in *Inspector) PurgeDead(ctx context.Context, letters []DeadLetter) (int, error) {
	if len(letters) == 0 {
		return 0, nil
	}
	dead, err := in.deadStream(ctx)
	if err != nil || dead == nil {
		return 0, err
	}
	n := 0
	for _, d := range letters {
		deleted, err := deleteLetter(ctx, dead, d.Seq)
		if err != nil {
			return n, fmt.Errorf("purge dead letter %d (task %s): %w", d.Seq, d.ID, err)
		}
		if deleted {
			n++
		}
	}
	return n, nil
}

// deleteLetter deletes dead letter seq; deleted is false if it was gone
// already (retried or purged meanwhile). The broker's refusal to delete a
// message it does not have comes as a plain "unsuccessful" error, not
// jetstream.ErrMsgNotFound, so a failed delete asks whether the letter is
// still there.
func deleteLetter(ctx context.Context, dead jetstream.Stream, seq uint64) (deleted bool, err error) {
	err = dead.DeleteMsg(ctx, seq)
	if err == nil {
		return true, nil
	}
	if _, gerr := dead.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return false, err
}
