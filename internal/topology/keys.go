package topology

import (
	"context"
	"log/slog"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// markerTTL is how long the buckets of locks and unique keys keep the
// marker of a key that expired, so that watchers see it go.
const markerTTL = time.Minute

// EnsureLocks looks forq.BucketLocks up, declares it if it is missing,
// and returns it. The error wraps ErrNotPermitted when it is missing and
// this user may not create it.
func EnsureLocks(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	d := &declarer{js: js, nc: js.Conn(), log: slog.Default()}
	return d.bucket(ctx, locksConfig(max(replicas, 1)))
}

// EnsureUnique is EnsureLocks for forq.BucketUnique.
func EnsureUnique(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	d := &declarer{js: js, nc: js.Conn(), log: slog.Default()}
	return d.bucket(ctx, uniqueConfig(max(replicas, 1)))
}

// locksConfig is forq.BucketLocks as forq creates it: keys expire one by
// one, leaving a marker that watchers see.
func locksConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         forq.BucketLocks,
		Description:    "forq locks: key = lock key, value = holder; each entry expires unless its holder refreshes it",
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
		History:        1,
		LimitMarkerTTL: markerTTL,
	}
}

// uniqueConfig is forq.BucketUnique as forq creates it.
func uniqueConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         forq.BucketUnique,
		Description:    "forq unique keys: key = unique key, value = the ID of the queued or running task that holds it",
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
		History:        1,
		LimitMarkerTTL: markerTTL,
	}
}
