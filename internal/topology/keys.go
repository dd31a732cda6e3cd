package topology

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// markerTTL is how long the buckets of locks and unique keys keep the
// marker of a key that expired, so that watchers see it go.
const markerTTL = time.Minute

// EnsureLocks declares forq.BucketLocks if it is missing and returns it.
func EnsureLocks(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return ensureTTLBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      forq.BucketLocks,
		Description: "forq locks: key = lock key, value = holder; each entry expires unless its holder refreshes it",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		History:     1,
	})
}

// EnsureUnique declares forq.BucketUnique if it is missing and returns it.
func EnsureUnique(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return ensureTTLBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      forq.BucketUnique,
		Description: "forq unique keys: key = unique key, value = the ID of the queued or running task that holds it",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		History:     1,
	})
}

// ensureTTLBucket looks cfg's bucket up and creates it, with per-key TTLs
// allowed, if it is missing.
func ensureTTLBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		cfg.LimitMarkerTTL = markerTTL
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("declare KV bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}
