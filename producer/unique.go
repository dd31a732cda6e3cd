package producer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/unique"
	"github.com/nats-io/nats.go/jetstream"
)

// Unique tasks (see package internal/unique). A task with a unique key
// claims the key in forq.BucketUnique (an atomic create: the key → the
// task's ID) before it is published. While the claim stands, enqueueing another task with the
// key publishes nothing and returns the claiming task's ID with
// Info.Duplicate set (Info.Sequence is then 0). The worker that finishes
// the task (succeeded, dead, canceled or expired) deletes the claim if it
// still names the task; a claim whose task has a final recorded result is
// taken over by the next enqueue; and a claim expires on its own after
// Config.UniqueTTL (plus the delay of a delayed task) in case its task was
// lost.

// uniqueKeys is the producer's handle on forq.BucketUnique.
type uniqueKeys struct {
	kv  jetstream.KeyValue
	ttl time.Duration
}

// duplicate is prepare's answer for a task whose unique key another task
// holds.
type duplicate struct{ id string }

func (d *duplicate) Error() string { return "unique key held by task " + d.id }

func duplicateOf(err error) (string, bool) {
	var d *duplicate
	if errors.As(err, &d) {
		return d.id, true
	}
	return "", false
}

// keys returns the producer's unique keys.
func (p *Producer) keys() unique.Keys {
	return unique.New(p.js, p.unique.kv, record.New(p.results))
}

// claimUnique claims t's unique key for t (see package internal/unique).
// It returns a *duplicate if another live task holds it.
func (p *Producer) claimUnique(ctx context.Context, t *forq.Task) error {
	ttl := p.unique.ttl
	if ttl <= 0 {
		ttl = forq.DefaultUniqueTTL
	}
	if !t.At.IsZero() {
		ttl += max(0, time.Until(t.At))
	} else if t.Delay > 0 {
		ttl += t.Delay
	}
	holder, err := p.keys().Claim(ctx, t.UniqueKey, t.ID, ttl)
	if err != nil {
		return fmt.Errorf("enqueue %s: %w", t.ID, err)
	}
	if holder != "" {
		return &duplicate{id: holder}
	}
	return nil
}

// releaseUnique deletes t's claim of its unique key, if it holds it: t was
// not enqueued after all.
func (p *Producer) releaseUnique(t forq.Task) {
	if t.UniqueKey == "" || t.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.keys().Release(ctx, t.UniqueKey, t.ID)
}
