package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/lock"
	"github.com/nats-io/nats.go/jetstream"
)

// Unique tasks. A task with a unique key claims the key in
// forq.BucketUnique (an atomic create: the key → the task's ID) before it
// is published. While the claim stands, enqueueing another task with the
// key publishes nothing and returns the claiming task's ID with
// Info.Duplicate set (Info.Sequence is then 0). The worker that finishes
// the task (succeeded, dead, canceled or expired) deletes the claim if it
// still names the task; a claim whose task has a final recorded result is
// taken over by the next enqueue; and a claim expires on its own after
// Config.UniqueTTL (plus the delay of a delayed task) in case its task was
// lost.

// WithUnique gives the task a unique key: while a task with the key is
// queued or running, Enqueue does not enqueue another one, and returns the
// existing task's ID with Info.Duplicate set. Unlike a task ID, which the
// broker de-duplicates only within its duplicate window, a unique key
// holds for as long as its task lives.
func WithUnique(key string) Option {
	return func(t *forq.Task) error {
		if err := forq.ValidateKey("unique", key); err != nil {
			return fmt.Errorf("%w: %w", forq.ErrInvalidOption, err)
		}
		t.UniqueKey = key
		return nil
	}
}

// WithLock gives the task a lock key: tasks with the same lock key never
// run at the same time, on any worker. A task whose lock is busy waits in
// the queue; waiting does not use up its attempts.
func WithLock(key string) Option {
	return func(t *forq.Task) error {
		if err := forq.ValidateKey("lock", key); err != nil {
			return fmt.Errorf("%w: %w", forq.ErrInvalidOption, err)
		}
		t.LockKey = key
		return nil
	}
}

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

// claimUnique claims t's unique key for t. It returns a *duplicate if
// another live task holds it.
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
	key := forq.KVKey(t.UniqueKey)
	for range 10 {
		_, err := p.unique.kv.Create(ctx, key, []byte(t.ID), jetstream.KeyTTL(ttl))
		if err == nil {
			return nil
		}
		if !lock.IsConflict(err) {
			return fmt.Errorf("enqueue %s: claim unique key %q: %w", t.ID, t.UniqueKey, err)
		}
		e, err := p.unique.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return fmt.Errorf("enqueue %s: unique key %q: %w", t.ID, t.UniqueKey, err)
		}
		holder := string(e.Value())
		if holder == t.ID {
			// The same task again: the broker's de-duplication decides.
			return nil
		}
		if !p.finished(ctx, holder) {
			return &duplicate{id: holder}
		}
		// Its task ended but the claim was not released (the worker died
		// between the two): take it over, if nobody else does first.
		_, err = lock.CASPut(ctx, p.js, forq.BucketUnique, key, []byte(t.ID), e.Revision(), ttl)
		if err == nil {
			return nil
		}
		if !lock.IsConflict(err) {
			return fmt.Errorf("enqueue %s: claim unique key %q: %w", t.ID, t.UniqueKey, err)
		}
	}
	return fmt.Errorf("enqueue %s: unique key %q keeps changing hands", t.ID, t.UniqueKey)
}

// finished reports whether task id has a final recorded result.
func (p *Producer) finished(ctx context.Context, id string) bool {
	e, err := p.results.Get(ctx, id)
	if err != nil {
		return false
	}
	var r forq.Result
	return json.Unmarshal(e.Value(), &r) == nil && r.State.Final()
}

// releaseUnique deletes t's claim of its unique key, if it holds it: t was
// not enqueued after all.
func (p *Producer) releaseUnique(t forq.Task) {
	if t.UniqueKey == "" || t.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	key := forq.KVKey(t.UniqueKey)
	if e, err := p.unique.kv.Get(ctx, key); err == nil && string(e.Value()) == t.ID {
		_ = p.unique.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	}
}
