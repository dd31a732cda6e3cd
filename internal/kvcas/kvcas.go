// Package kvcas is compare-and-set on JetStream KV buckets where
// jetstream.KeyValue falls short: a conditional write that keeps a TTL of
// its own, and the one test of "the key was not as expected" that every
// conditional write of forq's (Create, Update, Delete with a revision, and
// Put here) shares. The lock, unique-key, record and run-counter code use
// it on their buckets.
package kvcas

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Put writes value under key of bucket on the condition that revision is
// the key's last, with a TTL of its own (none if ttl is 0), and returns
// the new revision. kv.Update cannot do it: its write has no TTL, so a
// refreshed entry would never expire. A key changed since revision gives
// an error for which IsConflict is true.
func Put(ctx context.Context, js jetstream.JetStream, bucket, key string, value []byte, revision uint64, ttl time.Duration) (uint64, error) {
	m := &nats.Msg{Subject: "$KV." + bucket + "." + key, Header: nats.Header{}, Data: value}
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(revision)}
	if ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	ack, err := js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// IsConflict reports whether err says that a key was not in the state a
// conditional write expected: it exists, or changed since a revision.
func IsConflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
