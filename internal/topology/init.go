package topology

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// State is what Init found of one stream, bucket or consumer, or did to it.
type State string

// The states of an Item.
const (
	// Created: it was missing, Init created it.
	Created State = "created"
	// Found: it was there already, and is left as it is.
	Found State = "exists"
	// Upgraded: it was there, and Init added what this forq needs that it
	// lacked (Item.Added), changing nothing else.
	Upgraded State = "upgraded"
)

// Item is one stream, KV bucket or consumer as Init left it.
type Item struct {
	// Kind is "stream", "KV bucket" or "consumer"; Name its name.
	Kind, Name string
	State      State
	// Added is what an upgrade added ("direct access").
	Added []string `json:",omitempty"`
	// Lacks is what forq would add but this user may not.
	Lacks []string `json:",omitempty"`
	// Differs names each setting that differs from what Init was asked
	// for, as "replicas 1 (asked 3)". Init changes none of them.
	Differs []string `json:",omitempty"`
}

// Report is what Init found and did, in the order it declared.
type Report struct {
	Items []Item
}

// Differs counts the items whose settings differ from what was asked.
func (r *Report) Differs() int {
	n := 0
	for _, it := range r.Items {
		if len(it.Differs) > 0 || len(it.Lacks) > 0 {
			n++
		}
	}
	return n
}

// Init declares everything forq uses: the streams and buckets as Ensure
// does, and the consumer of every priority level of each of queues with
// ackWait (0: forq.DefaultAckWait). It is idempotent: what exists is left
// as it is, but for forq's additive upgrades; a setting that differs from
// o or ackWait is named in the report's Differs, never changed.
func Init(ctx context.Context, js jetstream.JetStream, o Options, queues []string, ackWait time.Duration) (*Report, error) {
	o = o.withDefaults()
	if ackWait <= 0 {
		ackWait = forq.DefaultAckWait
	}
	rep := &Report{}
	d := &declarer{js: js, nc: js.Conn(), log: o.Logger, rep: rep}
	h, err := d.all(ctx, o)
	if err != nil {
		return rep, err
	}
	for _, q := range queues {
		for _, p := range forq.Priorities {
			if _, err := d.consumer(ctx, h.Tasks, q, p, ackWait); err != nil {
				return rep, err
			}
		}
	}
	return rep, nil
}

// differ appends "what got (asked want)" to diffs when got != want.
func differ[T comparable](diffs []string, what string, got, want T) []string {
	if got == want {
		return diffs
	}
	return append(diffs, fmt.Sprintf("%s %v (asked %v)", what, got, want))
}

// limit is a stream limit as the broker reports it: 0 and -1 both mean
// none.
func limit[T int64 | int32](v T) string {
	if v <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

// age is a stream's max age, 0 meaning none.
func age(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}

// streamDiffs names the settings of got, an existing stream, that differ
// from want, what forq would create. Settings forq adds by itself
// (subjects, schedules, direct access) are upgrades, not differences.
func streamDiffs(got, want jetstream.StreamConfig) []string {
	var d []string
	d = differ(d, "replicas", max(got.Replicas, 1), want.Replicas)
	d = differ(d, "retention", got.Retention.String(), want.Retention.String())
	d = differ(d, "storage", got.Storage.String(), want.Storage.String())
	d = differ(d, "duplicate window", got.Duplicates, want.Duplicates)
	d = differ(d, "max age", age(got.MaxAge), age(want.MaxAge))
	d = differ(d, "max messages", limit(got.MaxMsgs), limit(want.MaxMsgs))
	d = differ(d, "max bytes", limit(got.MaxBytes), limit(want.MaxBytes))
	d = differ(d, "max messages per subject", limit(got.MaxMsgsPerSubject), limit(want.MaxMsgsPerSubject))
	d = differ(d, "max message size", limit(got.MaxMsgSize), limit(want.MaxMsgSize))
	d = differ(d, "discard policy", got.Discard.String(), want.Discard.String())
	d = differ(d, "per-message TTLs", got.AllowMsgTTL, want.AllowMsgTTL)
	for _, s := range got.Subjects {
		if !slices.Contains(want.Subjects, s) {
			d = append(d, fmt.Sprintf("subject %s (not forq's)", s))
		}
	}
	return d
}

// bucketDiffs names the settings of kv, an existing bucket, that differ
// from want.
func bucketDiffs(ctx context.Context, kv jetstream.KeyValue, want jetstream.KeyValueConfig) ([]string, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return nil, fmt.Errorf("unexpected status %T", st)
	}
	got := bs.StreamInfo().Config
	var d []string
	d = differ(d, "replicas", max(got.Replicas, 1), max(want.Replicas, 1))
	d = differ(d, "TTL", age(got.MaxAge), age(want.TTL))
	d = differ(d, "storage", got.Storage.String(), want.Storage.String())
	d = differ(d, "history", got.MaxMsgsPerSubject, int64(max(want.History, 1)))
	d = differ(d, "max bytes", limit(got.MaxBytes), limit(want.MaxBytes))
	d = differ(d, "per-key TTLs", got.AllowMsgTTL, want.LimitMarkerTTL > 0)
	return d, nil
}

// consumerDiffs names the settings of got, an existing consumer, that
// differ from want.
func consumerDiffs(got, want jetstream.ConsumerConfig) []string {
	var d []string
	d = differ(d, "ack wait", got.AckWait, want.AckWait)
	d = differ(d, "filter subject", got.FilterSubject, want.FilterSubject)
	d = differ(d, "ack policy", got.AckPolicy.String(), want.AckPolicy.String())
	d = differ(d, "max deliver", got.MaxDeliver, want.MaxDeliver)
	d = differ(d, "max ack pending", got.MaxAckPending, want.MaxAckPending)
	return d
}
