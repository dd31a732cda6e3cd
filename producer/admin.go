package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Administration of queues and dead letters: what "forq dead" and
// "forq pause"/"forq resume" do, usable from Go.

// ErrDeadLetterNotFound is wrapped by the errors of FindDeadLetter for a
// reference that names no dead letter.
var ErrDeadLetterNotFound = errors.New("dead letter not found")

// DeadLetter is a task in forq.StreamDead: one that used up its attempts
// (or failed permanently).
type DeadLetter struct {
	// Seq is the letter's sequence number in forq.StreamDead.
	Seq      uint64 `json:"seq"`
	ID       string `json:"id"`
	Queue    string `json:"queue"`
	Type     string `json:"type"`
	Attempts int    `json:"attempts"`
	// Error is the last attempt's error.
	Error string `json:"error"`
	// Time is when the task was dead-lettered (the broker's clock).
	Time    time.Time   `json:"time"`
	Header  nats.Header `json:"headers"`
	Payload []byte      `json:"payload"`
}

func (p *Producer) deadStream(ctx context.Context) (jetstream.Stream, error) {
	s, err := p.js.Stream(ctx, forq.StreamDead)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", forq.StreamDead, err)
	}
	return s, nil
}

// DeadLetters returns the dead letters of queue ("" for every queue), in
// the order they died.
func (p *Producer) DeadLetters(ctx context.Context, queue string) ([]DeadLetter, error) {
	subject := forq.SubjectDeadPrefix + ">"
	if queue != "" {
		if err := forq.ValidateQueue(queue); err != nil {
			return nil, err
		}
		subject = forq.DeadSubject(queue)
	}
	dead, err := p.deadStream(ctx)
	if err != nil {
		return nil, err
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

func letter(seq uint64, subject string, ts time.Time, h nats.Header, data []byte) DeadLetter {
	d := DeadLetter{
		Seq: seq, ID: cmpOr(h.Get(forq.HeaderTaskID), h.Get(forq.HeaderID)), Queue: h.Get(forq.HeaderQueue), Type: h.Get(forq.HeaderType),
		Error: h.Get(forq.HeaderError), Time: ts.UTC(), Header: h, Payload: data,
	}
	if d.Queue == "" {
		d.Queue = strings.TrimPrefix(subject, forq.SubjectDeadPrefix)
	}
	d.Attempts, _ = strconv.Atoi(h.Get(forq.HeaderAttempts))
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	return d
}

// FindDeadLetters resolves refs, each a task ID or a sequence number in
// forq.StreamDead, among the dead letters of queue ("" for all). A task ID
// matches every dead letter of that task; an ID that is all digits is
// taken as an ID first, then as a sequence number. The error wraps
// ErrDeadLetterNotFound and names every ref that matched nothing.
func (p *Producer) FindDeadLetters(ctx context.Context, queue string, refs []string) ([]DeadLetter, error) {
	all, err := p.DeadLetters(ctx, queue)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	taken := map[uint64]bool{}
	var missing []string
	for _, ref := range refs {
		found := false
		for _, d := range all {
			if d.ID == ref && !taken[d.Seq] {
				out, taken[d.Seq], found = append(out, d), true, true
			} else if d.ID == ref {
				found = true
			}
		}
		if !found {
			if seq, err := strconv.ParseUint(ref, 10, 64); err == nil {
				for _, d := range all {
					if d.Seq == seq {
						if !taken[d.Seq] {
							out, taken[d.Seq] = append(out, d), true
						}
						found = true
					}
				}
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

// RetryInfo says what RetryDead did with a dead letter.
type RetryInfo struct {
	// Sequence of the task in forq.StreamTasks.
	Sequence uint64
	// AlreadyQueued is true when the task was found in its queue already
	// (an earlier retry that was interrupted before it removed the letter);
	// it was not enqueued a second time.
	AlreadyQueued bool
}

// retryHeaders are the headers of a dead letter that do not go back with
// the task: the dead-letter metadata, and its deadline, which has passed or
// soon would (a retry is an explicit decision to run the task).
var retryHeaders = map[string]bool{
	forq.HeaderError: true, forq.HeaderAttempts: true, forq.HeaderQueue: true,
	forq.HeaderDeadline: true,
}

// RetryDead puts dead letter d back on its queue as it was enqueued: same
// task ID, type, payload and Forq-* headers, with its attempts reset (it is
// a new message, delivered for the first time). Only once the
// broker has stored the task again is the dead letter deleted, so a
// failure anywhere loses nothing; retrying a letter whose task is already
// back in its queue only deletes the letter. A recorded result goes back
// to queued, attempts 0.
func (p *Producer) RetryDead(ctx context.Context, d DeadLetter) (*RetryInfo, error) {
	if d.ID == "" {
		return nil, fmt.Errorf("retry dead letter %d: it has no %s header", d.Seq, forq.HeaderID)
	}
	if err := forq.ValidateQueue(d.Queue); err != nil {
		return nil, fmt.Errorf("retry %s: %w", d.ID, err)
	}
	info := &RetryInfo{}
	// Back to its priority level (forq.HeaderPriority, kept below).
	prio, _ := forq.ParsePriority(d.Header.Get(forq.HeaderPriority))
	m := nats.NewMsg(forq.LevelSubject(d.Queue, prio))
	m.Data = d.Payload
	for k, vs := range d.Header {
		if strings.HasPrefix(k, "Forq-") && !retryHeaders[k] && len(vs) > 0 {
			m.Header[k] = append([]string(nil), vs...)
		}
	}
	// The task keeps its ID in Forq-Id; its Nats-Msg-Id is this letter's
	// retry, so the broker does not drop it as a duplicate of the task's
	// first enqueue, and drops a second retry of the same letter.
	m.Header.Set(forq.HeaderTaskID, d.ID)
	m.Header.Set(forq.HeaderID, d.ID+"/retry/"+strconv.FormatUint(d.Seq, 10))
	if m.Header.Get(forq.HeaderType) == "" {
		return nil, fmt.Errorf("retry %s: the dead letter has no %s header", d.ID, forq.HeaderType)
	}
	// The record as it is before the publish: only that revision is set
	// back to queued, so a worker that has already started the task keeps
	// its fresher state.
	rec, err := p.results.Get(ctx, d.ID)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("retry %s: record: %w", d.ID, err)
	}
	ack, err := p.js.PublishMsg(ctx, m, jetstream.WithExpectStream(forq.StreamTasks))
	if err != nil {
		return nil, fmt.Errorf("retry %s: enqueue: %w", d.ID, err)
	}
	// A duplicate is an earlier retry of this letter that was cut off
	// before it deleted the letter: the task is queued already.
	info.Sequence, info.AlreadyQueued = ack.Sequence, ack.Duplicate
	if rec != nil && !info.AlreadyQueued {
		if r, err := decode(d.ID, rec.Value()); err == nil && r.State.Final() {
			b, _ := json.Marshal(forq.Result{ID: d.ID, Queue: d.Queue, Type: m.Header.Get(forq.HeaderType), State: forq.StateQueued})
			if _, err := p.results.Update(ctx, d.ID, b, rec.Revision()); err != nil && !isWrongSequence(err) {
				return info, fmt.Errorf("retry %s: re-enqueued, but its record still says %s: %w", d.ID, r.State, err)
			}
		}
	}
	dead, err := p.deadStream(ctx)
	if err != nil {
		return info, fmt.Errorf("retry %s: re-enqueued, but its dead letter %d stays: %w", d.ID, d.Seq, err)
	}
	if err := dead.DeleteMsg(ctx, d.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return info, fmt.Errorf("retry %s: re-enqueued, but its dead letter %d stays: %w", d.ID, d.Seq, err)
	}
	return info, nil
}

// PurgeDead deletes dead letters for good.
func (p *Producer) PurgeDead(ctx context.Context, letters []DeadLetter) (int, error) {
	dead, err := p.deadStream(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range letters {
		if err := dead.DeleteMsg(ctx, d.Seq); err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // gone already (retried or purged meanwhile)
			}
			return n, fmt.Errorf("purge dead letter %d (task %s): %w", d.Seq, d.ID, err)
		}
		n++
	}
	return n, nil
}

// PauseForever is the time Pause takes for "until resumed": JetStream
// pauses a consumer until a time, and this one is far enough.
var PauseForever = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// Pause pauses queue until the given time (PauseForever for "until
// resumed"): its workers start nothing until then, while tasks already
// running finish and enqueues go on. It is JetStream's consumer pause, so
// "nats consumer info FORQ_TASKS <queue>" shows it. A queue that has no
// consumer yet gets one (with ackWait, 0 for the default), so that the
// pause holds for the workers that start later. It returns the time the
// pause ends.
func (p *Producer) Pause(ctx context.Context, queue string, until time.Time, ackWait time.Duration) (time.Time, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return time.Time{}, err
	}
	tasks, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return time.Time{}, fmt.Errorf("stream %s: %w", forq.StreamTasks, err)
	}
	// Every priority level of the queue has a consumer of its own; all
	// are paused, the queue's own (normal) one last.
	var end time.Time
	for _, prio := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow, forq.PriorityNormal} {
		if _, err := topology.EnsureLevelConsumer(ctx, tasks, queue, prio, ackWait); err != nil {
			return time.Time{}, err
		}
		r, err := p.js.PauseConsumer(ctx, forq.StreamTasks, forq.LevelConsumerName(queue, prio), until)
		if err != nil {
			return time.Time{}, fmt.Errorf("pause queue %s: %w", queue, err)
		}
		end = r.PauseUntil
	}
	return end, nil
}

// ErrNoQueue is wrapped by Resume's error for a queue that has no consumer.
var ErrNoQueue = errors.New("no such queue")

// Resume resumes a paused queue; resuming a queue that is not paused is a
// no-op. The error wraps ErrNoQueue if the queue has no consumer.
func (p *Producer) Resume(ctx context.Context, queue string) error {
	if err := forq.ValidateQueue(queue); err != nil {
		return err
	}
	if _, err := p.js.ResumeConsumer(ctx, forq.StreamTasks, forq.ConsumerName(queue)); err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("resume queue %s: %w: it has no consumer in %s (no worker or pause ever declared it)", queue, ErrNoQueue, forq.StreamTasks)
		}
		return fmt.Errorf("resume queue %s: %w", queue, err)
	}
	// The consumers of the other priority levels, where they exist.
	for _, prio := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow} {
		if _, err := p.js.ResumeConsumer(ctx, forq.StreamTasks, forq.LevelConsumerName(queue, prio)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("resume queue %s, priority %s: %w", queue, prio, err)
		}
	}
	return nil
}

// QueuePaused reports whether queue's consumer is paused and until when.
func (p *Producer) QueuePaused(ctx context.Context, queue string) (bool, time.Time, error) {
	c, err := p.js.Consumer(ctx, forq.StreamTasks, forq.ConsumerName(queue))
	if err != nil {
		return false, time.Time{}, err
	}
	ci := c.CachedInfo()
	if !ci.Paused || ci.Config.PauseUntil == nil {
		return false, time.Time{}, nil
	}
	return true, *ci.Config.PauseUntil, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// SetRecordAll makes workers record the state and result of every task of
// queue (on), as if each had been enqueued WithRecord, or stops that (off).
// It is kept in the queue's consumer's metadata (forq.MetadataRecord), so
// it holds for every worker of the queue; they pick it up within a few
// seconds.
func (p *Producer) SetRecordAll(ctx context.Context, queue string, on bool) error {
	if err := forq.ValidateQueue(queue); err != nil {
		return err
	}
	tasks, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return fmt.Errorf("stream %s: %w", forq.StreamTasks, err)
	}
	c, err := topology.EnsureConsumer(ctx, tasks, queue, 0)
	if err != nil {
		return err
	}
	cfg := c.CachedInfo().Config
	md := map[string]string{}
	for k, v := range cfg.Metadata {
		md[k] = v
	}
	if on {
		md[forq.MetadataRecord] = "1"
	} else {
		delete(md, forq.MetadataRecord)
	}
	cfg.Metadata = md
	if _, err := p.js.UpdateConsumer(ctx, forq.StreamTasks, cfg); err != nil {
		return fmt.Errorf("queue %s: %w", queue, err)
	}
	return nil
}
