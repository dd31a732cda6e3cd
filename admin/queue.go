package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// PauseForever is the time Pause takes for "until resumed": JetStream
// pauses a consumer until a time, and this one is far enough.
var PauseForever = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// Pause pauses queue until the given time (PauseForever for "until
// resumed"): its workers start nothing until then, while tasks already
// running finish and enqueues go on. It is JetStream's consumer pause, so
// "nats consumer info FORQ_TASKS <queue>" shows it. A queue that has no
// consumer yet gets one (with ackWait, 0 for the default), so that the
// pause holds for the workers that start later. It returns the time the
// pause ends. A bad queue name is an error wrapping forq.ErrInvalidQueue;
// a zero until, one wrapping forq.ErrInvalidOption.
func (in *Inspector) Pause(ctx context.Context, queue string, until time.Time, ackWait time.Duration) (time.Time, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return time.Time{}, err
	}
	if until.IsZero() {
		return time.Time{}, fmt.Errorf("pause queue %s: %w: no end time (PauseForever pauses until Resume)", queue, forq.ErrInvalidOption)
	}
	if ackWait < 0 {
		return time.Time{}, fmt.Errorf("pause queue %s: %w: ack wait %s is negative", queue, forq.ErrInvalidOption, ackWait)
	}
	h, err := in.declare(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("pause queue %s: %w", queue, err)
	}
	// Every priority level of the queue has a consumer of its own; all
	// are paused, the queue's own (normal) one last.
	var end time.Time
	for _, prio := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow, forq.PriorityNormal} {
		if _, err := topology.EnsureLevelConsumer(ctx, in.js.Conn(), h.Tasks, queue, prio, ackWait); err != nil {
			return time.Time{}, err
		}
		r, err := in.js.PauseConsumer(ctx, forq.StreamTasks, wire.LevelConsumerName(queue, prio), until)
		if err != nil {
			return time.Time{}, fmt.Errorf("pause queue %s: %w", queue, err)
		}
		end = r.PauseUntil
	}
	return end, nil
}

// noQueue is the error for a queue with no consumer.
func noQueue(op, queue string) error {
	return fmt.Errorf("%s queue %s: %w: it has no consumer in %s (no worker or pause ever declared it)", op, queue, ErrNoQueue, forq.StreamTasks)
}

// Resume resumes a paused queue; resuming a queue that is not paused is a
// no-op. The error wraps ErrNoQueue if the queue has no consumer, and
// forq.ErrInvalidQueue for a bad queue name.
func (in *Inspector) Resume(ctx context.Context, queue string) error {
	if err := forq.ValidateQueue(queue); err != nil {
		return err
	}
	if _, err := in.js.ResumeConsumer(ctx, forq.StreamTasks, wire.ConsumerName(queue)); err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return noQueue("resume", queue)
		}
		return fmt.Errorf("resume queue %s: %w", queue, err)
	}
	// The consumers of the other priority levels, where they exist.
	for _, prio := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow} {
		if _, err := in.js.ResumeConsumer(ctx, forq.StreamTasks, wire.LevelConsumerName(queue, prio)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("resume queue %s, priority %s: %w", queue, prio, err)
		}
	}
	return nil
}

// Paused reports whether queue is paused and until when. The error wraps
// ErrNoQueue if the queue has no consumer, and forq.ErrInvalidQueue for a
// bad queue name.
func (in *Inspector) Paused(ctx context.Context, queue string) (bool, time.Time, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return false, time.Time{}, err
	}
	c, err := in.js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(queue))
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, time.Time{}, noQueue("paused", queue)
	}
	if err != nil {
		return false, time.Time{}, fmt.Errorf("queue %s: %w", queue, err)
	}
	ci := c.CachedInfo()
	if !ci.Paused || ci.Config.PauseUntil == nil {
		return false, time.Time{}, nil
	}
	return true, *ci.Config.PauseUntil, nil
}

// SetRecordAll makes workers record the state and result of every task of
// queue (on), as if each had been enqueued with a record, or stops that
// (off). It is kept in the queue's consumer's metadata
// (forq.MetadataRecord), so it holds for every worker of the queue; they
// pick it up within a few seconds. A queue without a consumer gets one. A
// bad queue name is an error wrapping forq.ErrInvalidQueue.
func (in *Inspector) SetRecordAll(ctx context.Context, queue string, on bool) error {
	if err := forq.ValidateQueue(queue); err != nil {
		return err
	}
	h, err := in.declare(ctx)
	if err != nil {
		return fmt.Errorf("queue %s: %w", queue, err)
	}
	c, err := topology.EnsureConsumer(ctx, in.js.Conn(), h.Tasks, queue, 0)
	if err != nil {
		return err
	}
	cfg := c.CachedInfo().Config
	md := maps.Clone(cfg.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	if on {
		md[forq.MetadataRecord] = "1"
	} else {
		delete(md, forq.MetadataRecord)
	}
	cfg.Metadata = md
	if _, err := in.js.UpdateConsumer(ctx, forq.StreamTasks, cfg); err != nil {
		return fmt.Errorf("queue %s: %w", queue, err)
	}
	return nil
}

// PurgeQueue removes every task of queue from forq.StreamTasks, at every
// priority level: the queued ones, and those delivered to a worker and
// not yet acknowledged. It returns how many there were just before the
// purge (one enqueued meanwhile may go too, uncounted). A task running now
// is not stopped (cancel it for that), but it is gone from the broker: it
// is not redelivered if its worker dies, and its acknowledgement finds
// nothing. Delayed tasks not due yet stay (see Tasks with
// StateScheduled); so do the records of purged tasks, and their unique
// keys until their TTL. A queue with nothing to purge gives 0; a bad
// queue name is an error wrapping forq.ErrInvalidQueue.
func (in *Inspector) PurgeQueue(ctx context.Context, queue string) (uint64, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return 0, err
	}
	tasks, err := in.stream(ctx, forq.StreamTasks)
	if err != nil || tasks == nil {
		return 0, err
	}
	var n uint64
	for _, prio := range forq.Priorities {
		subject := wire.LevelSubject(queue, prio)
		info, err := tasks.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			return n, fmt.Errorf("purge queue %s: %w", queue, err)
		}
		if info.State.Subjects[subject] == 0 {
			continue
		}
		if err := tasks.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
			return n, fmt.Errorf("purge queue %s, priority %s: %w", queue, prio, err)
		}
		n += info.State.Subjects[subject]
	}
	return n, nil
}
