// Package unique keeps the unique keys of tasks in forq.BucketUnique: the
// producer claims a task's key before it publishes the task, the worker
// that ends the task releases it, and a claim whose task ended without
// releasing it is taken over by the next claim.
//
// A claim is an entry key → the ID of the task that holds it, created
// atomically, with a TTL (the producer's unique TTL, plus the delay of a
// delayed task) so that a claim whose task was lost (purged, say) expires
// on its own. While the claim stands, another task with the key is not
// enqueued. The worker that finishes the task (succeeded, dead, canceled
// or expired) deletes the claim if it still names the task; one whose
// task has a final recorded result (its worker died between the two) is
// taken over by the next enqueue.
package unique

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/record"
	"github.com/nats-io/nats.go/jetstream"
)

// tries bounds the claim loop: each try that loses a race looks again.
const tries = 10

// Keys is the bucket of unique keys. It is a value: copying it is cheap.
type Keys struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	records record.Store
}

// New returns the Keys in kv, a handle on forq.BucketUnique of js; a
// claim's task is looked up in records.
func New(js jetstream.JetStream, kv jetstream.KeyValue, records record.Store) Keys {
	return Keys{js: js, kv: kv, records: records}
}

// Claim claims unique key key for task id, for ttl. It returns "" when id
// holds the key now: claimed, taken over from a task that has ended, or
// held by id already (the same task enqueued again, which the broker's
// de-duplication decides). Otherwise it returns the ID of the task that
// holds the key.
func (k Keys) Claim(ctx context.Context, key, id string, ttl time.Duration) (holder string, err error) {
	kvKey := forq.KVKey(key)
	for range tries {
		_, err := k.kv.Create(ctx, kvKey, []byte(id), jetstream.KeyTTL(ttl))
		if err == nil {
			return "", nil
		}
		if !kvcas.IsConflict(err) {
			return "", fmt.Errorf("claim unique key %q: %w", key, err)
		}
		e, err := k.kv.Get(ctx, kvKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return "", fmt.Errorf("unique key %q: %w", key, err)
		}
		holder := string(e.Value())
		if holder == id {
			return "", nil
		}
		if !k.ended(ctx, holder) {
			return holder, nil
		}
		// Its task ended but the claim was not released (the worker died
		// between the two): take it over, if nobody else does first.
		_, err = kvcas.Put(ctx, k.js, forq.BucketUnique, kvKey, []byte(id), e.Revision(), ttl)
		if err == nil {
			return "", nil
		}
		if !kvcas.IsConflict(err) {
			return "", fmt.Errorf("claim unique key %q: %w", key, err)
		}
	}
	return "", fmt.Errorf("unique key %q keeps changing hands", key)
}

// ended reports whether task id has a final recorded result.
func (k Keys) ended(ctx context.Context, id string) bool {
	r, _, err := k.records.Get(ctx, id)
	return err == nil && r != nil && r.State.Final()
}

// Release deletes the claim of unique key key if task id holds it: the
// task ended, or was not enqueued after all. A claim another task holds,
// or none, is left as it is.
func (k Keys) Release(ctx context.Context, key, id string) error {
	kvKey := forq.KVKey(key)
	e, err := k.kv.Get(ctx, kvKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if string(e.Value()) != id {
		return nil // claimed by a newer task
	}
	err = k.kv.Delete(ctx, kvKey, jetstream.LastRevision(e.Revision()))
	if kvcas.IsConflict(err) {
		return nil // changed hands meanwhile
	}
	return err
}
