// Package topology declares forq's streams, consumers and KV bucket on a
// JetStream server. Every forq process calls it on start; whichever comes
// first creates what is missing, and nobody deletes or rewrites what another
// process declared.
package topology

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// Options tune what Ensure creates. They apply only to what does not exist
// yet: an existing stream or bucket keeps its configuration.
type Options struct {
	// Replicas of each stream and of the bucket; 0 means 1.
	Replicas int
	// ResultTTL is how long results live; 0 means forq.DefaultResultTTL.
	ResultTTL time.Duration
	// DuplicateWindow of the task stream; 0 means forq.DefaultDuplicateWindow.
	DuplicateWindow time.Duration
}

// Handles are what Ensure declared: the two streams and the results bucket.
type Handles struct {
	Tasks jetstream.Stream
	// Batching is whether Tasks takes fast batch publishes.
	Batching bool
	Dead     jetstream.Stream
	Results  jetstream.KeyValue
	Cancel   jetstream.KeyValue
	Workers  jetstream.KeyValue
	// Locks and Unique are forq.BucketLocks and forq.BucketUnique.
	Locks  jetstream.KeyValue
	Unique jetstream.KeyValue
}

// Ensure declares FORQ_TASKS, FORQ_DEAD and forq_results if they are
// missing, and returns handles to them.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) (*Handles, error) {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.ResultTTL <= 0 {
		o.ResultTTL = forq.DefaultResultTTL
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = forq.DefaultDuplicateWindow
	}
	tasks, err := ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        forq.StreamTasks,
		Description: "forq task queues: one subject per queue, removed once a worker acknowledges",
		Subjects:    taskSubjects,
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
		AllowMsgTTL: true,
		// Delayed and periodic tasks are the broker's message schedules;
		// a schedule replaces the last one on its subject (a roll-up).
		AllowMsgSchedules: true,
		AllowRollup:       true,
		// Producers send a batch of tasks as one flow-controlled batch
		// (NATS 2.14 and later; an older broker ignores the setting and
		// producers publish task by task).
		AllowBatchPublish: batching(js),
	})
	if err != nil {
		return nil, err
	}
	batch, err := upgradeTasks(ctx, js, tasks)
	if err != nil {
		return nil, err
	}
	dead, err := ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        forq.StreamDead,
		Description: "forq dead letters: tasks that used up their attempts, last error in Forq-Error",
		Subjects:    []string{forq.SubjectDeadPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
	})
	if err != nil {
		return nil, err
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      forq.BucketResults,
		Description: "forq task results by task ID",
		TTL:         o.ResultTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		History:     1,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, forq.BucketResults)
	}
	if err != nil {
		return nil, fmt.Errorf("declare KV bucket %s: %w", forq.BucketResults, err)
	}
	cancel, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      forq.BucketCancel,
		Description: "forq cancel requests by task ID",
		TTL:         o.ResultTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		History:     1,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		cancel, err = js.KeyValue(ctx, forq.BucketCancel)
	}
	if err != nil {
		return nil, fmt.Errorf("declare KV bucket %s: %w", forq.BucketCancel, err)
	}
	workers, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      forq.BucketWorkers,
		Description: "forq worker processes: status by host and PID, expiring when not refreshed",
		TTL:         forq.WorkerStatusTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    o.Replicas,
		History:     1,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		workers, err = js.KeyValue(ctx, forq.BucketWorkers)
	}
	if err != nil {
		return nil, fmt.Errorf("declare KV bucket %s: %w", forq.BucketWorkers, err)
	}
	locks, err := EnsureLocks(ctx, js, o.Replicas)
	if err != nil {
		return nil, err
	}
	unique, err := EnsureUnique(ctx, js, o.Replicas)
	if err != nil {
		return nil, err
	}
	return &Handles{Tasks: tasks, Batching: batch, Dead: dead, Results: kv, Cancel: cancel, Workers: workers, Locks: locks, Unique: unique}, nil
}

// batching reports whether the broker js is connected to takes fast batch
// publishes (NATS 2.14 and later).
func batching(js jetstream.JetStream) bool {
	var major, minor int
	if _, err := fmt.Sscanf(js.Conn().ConnectedServerVersion(), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 2 || major == 2 && minor >= 14
}

// taskSubjects are FORQ_TASKS's subjects: the queues, the delayed tasks'
// schedules and the periodic tasks' definitions.
var taskSubjects = []string{
	forq.SubjectTasksPrefix + ">",
	forq.SubjectSchedulePrefix + ">",
	forq.SubjectPeriodicPrefix + ">",
}

// upgradeTasks adds to a FORQ_TASKS declared by an older forq what delayed
// and periodic tasks need (their subjects and message schedules) and, on a
// broker that has it, batched publishing. It only adds; what the stream
// has stays. It reports whether the stream takes fast batch publishes.
func upgradeTasks(ctx context.Context, js jetstream.JetStream, s jetstream.Stream) (batch bool, err error) {
	cfg := s.CachedInfo().Config
	missing := false
	for _, want := range taskSubjects {
		if !slices.Contains(cfg.Subjects, want) {
			cfg.Subjects = append(cfg.Subjects, want)
			missing = true
		}
	}
	// Batching stays on if the stream has it, whatever server this
	// process is connected to.
	batch = cfg.AllowBatchPublish || batching(js)
	if !missing && cfg.AllowMsgSchedules && cfg.AllowRollup && !cfg.DenyPurge && cfg.AllowBatchPublish == batch {
		return batch, nil
	}
	cfg.AllowMsgSchedules, cfg.AllowRollup, cfg.DenyPurge, cfg.AllowBatchPublish = true, true, false, batch
	info, err := js.UpdateStream(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("upgrade stream %s: %w", cfg.Name, err)
	}
	return info.CachedInfo().Config.AllowBatchPublish, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Declared by another process, perhaps with other settings
		// (replicas, limits): use it as it is.
		s, err = js.Stream(ctx, cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("declare stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// EnsureConsumer declares the durable pull consumer that all workers of
// queue share for its normal-priority tasks (the queue's own consumer), with the given ack wait if it is new. An existing consumer
// is used as it is; its actual configuration is in the returned consumer's
// CachedInfo.
func EnsureConsumer(ctx context.Context, tasks jetstream.Stream, queue string, ackWait time.Duration) (jetstream.Consumer, error) {
	return EnsureLevelConsumer(ctx, tasks, queue, forq.PriorityNormal, ackWait)
}

// EnsureLevelConsumer is EnsureConsumer for the tasks of queue at priority
// level p: consumer forq.LevelConsumerName(queue, p), filtered on
// forq.LevelSubject(queue, p).
func EnsureLevelConsumer(ctx context.Context, tasks jetstream.Stream, queue string, p forq.Priority, ackWait time.Duration) (jetstream.Consumer, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return nil, err
	}
	if !p.Valid() {
		return nil, fmt.Errorf("%w: priority %d", forq.ErrInvalidOption, p)
	}
	if ackWait <= 0 {
		ackWait = forq.DefaultAckWait
	}
	name := forq.LevelConsumerName(queue, p)
	desc := "forq workers of queue " + queue
	if p != forq.PriorityNormal {
		desc += ", priority " + p.String()
	}
	c, err := tasks.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   desc,
		FilterSubject: forq.LevelSubject(queue, p),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		// forq counts attempts itself from the delivery count, per task;
		// the broker must keep redelivering so that a task whose workers
		// keep crashing can be dead-lettered.
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if errors.Is(err, jetstream.ErrConsumerExists) {
		c, err = tasks.Consumer(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("declare consumer %s on %s: %w", name, forq.StreamTasks, err)
	}
	return c, nil
}
