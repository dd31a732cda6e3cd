// Package topology declares forq's streams, consumers and KV buckets on a
// JetStream server. Every forq process calls it on start: it looks each one
// up first and creates only what is missing, so a user that may only read
// them (and publish tasks) works once an admin has declared them ('forq
// init', or any forq process with the right to create). Nobody deletes or
// rewrites what another process declared; forq's own additive upgrades
// (new subjects, message schedules, batch publishing, direct access) are
// applied when an existing stream lacks them and this user may update it.
package topology

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
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
	// Logger gets the warning when an upgrade of an existing stream or
	// consumer is refused for permissions; nil means slog.Default().
	Logger *slog.Logger
}

// withDefaults returns o with its zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.ResultTTL <= 0 {
		o.ResultTTL = forq.DefaultResultTTL
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = forq.DefaultDuplicateWindow
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
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

// Ensure looks up FORQ_TASKS, FORQ_DEAD and forq's KV buckets, creates
// those that are missing, and returns handles to them. An existing stream
// that lacks one of forq's additive settings is upgraded if this user may
// update it; if not, a warning says so and Ensure goes on with the stream
// as it is. The error wraps ErrNotPermitted, naming what is missing and
// who must declare it, when something is missing and this user may not
// create (or look up) it. On a server older than forq needs (Base) it
// declares nothing and returns an error wrapping forq.ErrServerTooOld.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) (*Handles, error) {
	o = o.withDefaults()
	d := &declarer{js: js, nc: js.Conn(), log: o.Logger}
	return d.all(ctx, o)
}

// all declares the streams and buckets with o (its defaults set).
func (d *declarer) all(ctx context.Context, o Options) (*Handles, error) {
	if err := Require(ctx, d.nc, nil, Base); err != nil {
		return nil, err
	}
	tasks, err := d.stream(ctx, tasksConfig(d.js, o))
	if err != nil {
		return nil, err
	}
	tasks, err = d.upgrade(ctx, tasks, upgradeTasks(d.js))
	if err != nil {
		return nil, err
	}
	dead, err := d.stream(ctx, deadConfig(o))
	if err != nil {
		return nil, err
	}
	dead, err = d.upgrade(ctx, dead, upgradeDirect)
	if err != nil {
		return nil, err
	}
	h := &Handles{Tasks: tasks, Batching: tasks.CachedInfo().Config.AllowBatchPublish, Dead: dead}
	for _, b := range []struct {
		kv  *jetstream.KeyValue
		cfg jetstream.KeyValueConfig
	}{
		{&h.Results, resultsConfig(o)},
		{&h.Cancel, cancelConfig(o)},
		{&h.Workers, workersConfig(o)},
		{&h.Locks, locksConfig(o.Replicas)},
		{&h.Unique, uniqueConfig(o.Replicas)},
	} {
		if *b.kv, err = d.bucket(ctx, b.cfg); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// tasksConfig is FORQ_TASKS as forq creates it.
func tasksConfig(js jetstream.JetStream, o Options) jetstream.StreamConfig {
	return jetstream.StreamConfig{
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
		// Tools read tasks by sequence or subject without a consumer
		// ("nats stream view", which a work queue allows no other way).
		// A direct get reads; it never removes a task.
		AllowDirect: true,
	}
}

// deadConfig is FORQ_DEAD as forq creates it.
func deadConfig(o Options) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        forq.StreamDead,
		Description: "forq dead letters: tasks that used up their attempts, last error in Forq-Error",
		Subjects:    []string{forq.SubjectDeadPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
		AllowDirect: true,
	}
}

func resultsConfig(o Options) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      forq.BucketResults,
		Description: "forq task results by task ID",
		TTL:         o.ResultTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		History:     1,
	}
}

func cancelConfig(o Options) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      forq.BucketCancel,
		Description: "forq cancel requests by task ID",
		TTL:         o.ResultTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		History:     1,
	}
}

func workersConfig(o Options) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      forq.BucketWorkers,
		Description: "forq worker processes: status by host and PID, expiring when not refreshed",
		TTL:         forq.WorkerStatusTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    o.Replicas,
		History:     1,
	}
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

// An upgrader adds to cfg, an existing stream's configuration, what forq
// needs that it lacks, and names what it added (nothing: no update).
type upgrader func(cfg *jetstream.StreamConfig) (added []string)

// upgradeTasks adds to a FORQ_TASKS declared by an older forq what delayed
// and periodic tasks need (their subjects and message schedules), on a
// broker that has it batched publishing, and direct access. It only adds;
// what the stream has stays. Batching stays on if the stream has it,
// whatever server this process is connected to.
func upgradeTasks(js jetstream.JetStream) upgrader {
	return func(cfg *jetstream.StreamConfig) (added []string) {
		for _, want := range taskSubjects {
			if !slices.Contains(cfg.Subjects, want) {
				cfg.Subjects = append(cfg.Subjects, want)
				added = append(added, "subject "+want)
			}
		}
		if !cfg.AllowMsgSchedules {
			cfg.AllowMsgSchedules = true
			added = append(added, "message schedules")
		}
		if !cfg.AllowRollup {
			cfg.AllowRollup = true
			added = append(added, "roll-ups")
		}
		if cfg.DenyPurge {
			cfg.DenyPurge = false
			added = append(added, "purges")
		}
		if !cfg.AllowBatchPublish && batching(js) {
			cfg.AllowBatchPublish = true
			added = append(added, "batch publishing")
		}
		return append(added, upgradeDirect(cfg)...)
	}
}

// upgradeDirect turns direct access on.
func upgradeDirect(cfg *jetstream.StreamConfig) []string {
	if cfg.AllowDirect {
		return nil
	}
	cfg.AllowDirect = true
	return []string{"direct access"}
}

// declarer looks up and creates forq's streams, buckets and consumers,
// noting in rep (when not nil, for Init) what it found and did.
type declarer struct {
	js  jetstream.JetStream // nil when declaring consumers only
	nc  *nats.Conn
	log *slog.Logger
	rep *Report
}

// stream looks cfg's stream up and creates it if it is missing.
func (d *declarer) stream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := d.lookupStream(ctx, cfg.Name, "stream "+cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		err = d.call(ctx, "STREAM.CREATE."+cfg.Name, func(ctx context.Context) (err error) {
			s, err = d.js.CreateStream(ctx, cfg)
			return err
		})
		switch {
		case err == nil:
			d.note(Item{Kind: "stream", Name: cfg.Name, State: Created})
			return s, nil
		case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
			// Declared by another process meanwhile, perhaps with
			// other settings: use it as it is.
			s, err = d.lookupStream(ctx, cfg.Name, "stream "+cfg.Name)
		default:
			return nil, createErr("stream "+cfg.Name, err)
		}
	}
	if err != nil {
		return nil, err
	}
	d.note(Item{Kind: "stream", Name: cfg.Name, State: Found, Differs: streamDiffs(s.CachedInfo().Config, cfg)})
	return s, nil
}

// lookupStream looks stream name up; what names it in errors.
func (d *declarer) lookupStream(ctx context.Context, name, what string) (s jetstream.Stream, err error) {
	err = d.call(ctx, "STREAM.INFO."+name, func(ctx context.Context) (err error) {
		s, err = d.js.Stream(ctx, name)
		return err
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, lookupErr(what, err)
	}
	return s, err
}

// upgrade applies up to stream s if it lacks something. An update this
// user may not make is logged, and s is returned as it is.
func (d *declarer) upgrade(ctx context.Context, s jetstream.Stream, up upgrader) (jetstream.Stream, error) {
	cfg := s.CachedInfo().Config
	added := up(&cfg)
	if len(added) == 0 {
		return s, nil
	}
	var u jetstream.Stream
	err := d.call(ctx, "STREAM.UPDATE."+cfg.Name, func(ctx context.Context) (err error) {
		u, err = d.js.UpdateStream(ctx, cfg)
		return err
	})
	if errors.Is(err, ErrNotPermitted) {
		d.log.Warn(fmt.Sprintf("stream %s lacks %s, and this user may not update it (%v): going on without; run 'forq init' with an admin credential to add it",
			cfg.Name, strings.Join(added, ", "), err))
		d.note(Item{Kind: "stream", Name: cfg.Name, State: Found, Lacks: added})
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upgrade stream %s (add %s): %w", cfg.Name, strings.Join(added, ", "), err)
	}
	d.note(Item{Kind: "stream", Name: cfg.Name, State: Upgraded, Added: added})
	return u, nil
}

// bucket looks cfg's bucket up and creates it if it is missing. A bucket
// that lets keys expire one by one (locks, unique keys) is created with
// LimitMarkerTTL.
func (d *declarer) bucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	what := "KV bucket " + cfg.Bucket
	kv, err := d.lookupBucket(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		// nats.go asks for the account's info first.
		err = guard(ctx, d.nc, []string{"STREAM.CREATE.KV_" + cfg.Bucket, "INFO"}, func(ctx context.Context) (err error) {
			kv, err = d.js.CreateKeyValue(ctx, cfg)
			return err
		})
		switch {
		case err == nil:
			d.note(Item{Kind: "KV bucket", Name: cfg.Bucket, State: Created})
			return kv, nil
		case errors.Is(err, jetstream.ErrBucketExists):
			kv, err = d.lookupBucket(ctx, cfg.Bucket)
		default:
			return nil, createErr(what, err)
		}
	}
	if err != nil {
		return nil, err
	}
	it := Item{Kind: "KV bucket", Name: cfg.Bucket, State: Found}
	if d.rep != nil {
		diffs, err := bucketDiffs(ctx, kv, cfg)
		if err != nil {
			return nil, lookupErr(what, err)
		}
		it.Differs = diffs
	}
	d.note(it)
	return kv, nil
}

func (d *declarer) lookupBucket(ctx context.Context, bucket string) (kv jetstream.KeyValue, err error) {
	err = d.call(ctx, "STREAM.INFO.KV_"+bucket, func(ctx context.Context) (err error) {
		kv, err = d.js.KeyValue(ctx, bucket)
		return err
	})
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, lookupErr("KV bucket "+bucket, err)
	}
	return kv, err
}

// note records it in the report, if any.
func (d *declarer) note(it Item) {
	if d.rep == nil {
		return
	}
	// An upgrade follows the look-up of the same stream: one item.
	if n := len(d.rep.Items); n > 0 && d.rep.Items[n-1].Kind == it.Kind && d.rep.Items[n-1].Name == it.Name {
		prev := &d.rep.Items[n-1]
		if it.State == Upgraded && prev.State == Found {
			prev.State = Upgraded
		}
		prev.Added = append(prev.Added, it.Added...)
		prev.Lacks = append(prev.Lacks, it.Lacks...)
		return
	}
	d.rep.Items = append(d.rep.Items, it)
}

// createErr is the error of a failed create of what (a missing thing).
func createErr(what string, err error) error {
	if errors.Is(err, ErrNotPermitted) {
		return fmt.Errorf("%s is missing and this user may not create it (%w): run 'forq init' with an admin credential", what, err)
	}
	return fmt.Errorf("declare %s: %w", what, err)
}

// lookupErr is the error of a failed look-up of what.
func lookupErr(what string, err error) error {
	if errors.Is(err, ErrNotPermitted) {
		return fmt.Errorf("this user may not look up %s (%w): every forq client reads it on start; grant the user that subject (see the README's permissions)", what, err)
	}
	return fmt.Errorf("look up %s: %w", what, err)
}

// EnsureConsumer declares the durable pull consumer that all workers of
// queue share for its normal-priority tasks (the queue's own consumer),
// with the given ack wait (0: forq.DefaultAckWait) if it is new. An
// existing consumer is used as it is, but for one case: one declared with
// forq.LegacyAckWait (the default of an older forq) is moved to
// forq.DefaultAckWait when ackWait is the default, if this user may update
// it (else a warning says so). Its actual configuration is in the returned
// consumer's CachedInfo.
func EnsureConsumer(ctx context.Context, nc *nats.Conn, tasks jetstream.Stream, queue string, ackWait time.Duration) (jetstream.Consumer, error) {
	return EnsureLevelConsumer(ctx, nc, tasks, queue, forq.PriorityNormal, ackWait)
}

// EnsureLevelConsumer is EnsureConsumer for the tasks of queue at priority
// level p: consumer wire.LevelConsumerName(queue, p), filtered on
// wire.LevelSubject(queue, p). nc is the connection tasks was got on. It looks the consumer up first and creates
// it only if it is missing; the error wraps ErrNotPermitted when it is
// missing and this user may not create it.
func EnsureLevelConsumer(ctx context.Context, nc *nats.Conn, tasks jetstream.Stream, queue string, p forq.Priority, ackWait time.Duration) (jetstream.Consumer, error) {
	d := &declarer{nc: nc, log: slog.Default()}
	return d.consumer(ctx, tasks, queue, p, ackWait)
}

// consumerConfig is the consumer of queue's level p as forq creates it.
func consumerConfig(queue string, p forq.Priority, ackWait time.Duration) jetstream.ConsumerConfig {
	desc := "forq workers of queue " + queue
	if p != forq.PriorityNormal {
		desc += ", priority " + p.String()
	}
	return jetstream.ConsumerConfig{
		Durable:       wire.LevelConsumerName(queue, p),
		Description:   desc,
		FilterSubject: wire.LevelSubject(queue, p),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		// forq counts attempts itself from the delivery count, per task;
		// the broker must keep redelivering so that a task whose workers
		// keep crashing can be dead-lettered.
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

func (d *declarer) consumer(ctx context.Context, tasks jetstream.Stream, queue string, p forq.Priority, ackWait time.Duration) (jetstream.Consumer, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return nil, err
	}
	if !p.Valid() {
		return nil, fmt.Errorf("%w: priority %d", forq.ErrInvalidOption, p)
	}
	if ackWait <= 0 {
		ackWait = forq.DefaultAckWait
	}
	cfg := consumerConfig(queue, p, ackWait)
	name := cfg.Durable
	what := fmt.Sprintf("consumer %s of queue %s on stream %s", name, queue, forq.StreamTasks)
	c, err := d.lookupConsumer(ctx, tasks, name, what)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		err = d.call(ctx, "CONSUMER.CREATE."+forq.StreamTasks+"."+name, func(ctx context.Context) (err error) {
			c, err = tasks.CreateConsumer(ctx, cfg)
			return err
		})
		switch {
		case err == nil:
			d.note(Item{Kind: "consumer", Name: name, State: Created})
			return c, nil
		case errors.Is(err, jetstream.ErrConsumerExists):
			c, err = d.lookupConsumer(ctx, tasks, name, what)
		default:
			return nil, createErr(what, err)
		}
	}
	if err != nil {
		return nil, err
	}
	if ackWait == forq.DefaultAckWait && c.CachedInfo().Config.AckWait == forq.LegacyAckWait {
		return d.moveAckWait(ctx, tasks, c, ackWait)
	}
	d.note(Item{Kind: "consumer", Name: name, State: Found, Differs: consumerDiffs(c.CachedInfo().Config, cfg)})
	return c, nil
}

// moveAckWait moves consumer c, declared by an older forq with its
// default ack wait, to ackWait (a dead worker's tasks would wait 30 s to
// come back). Only the ack wait changes; the broker keeps the consumer's
// state. If this user may not update it, a warning says so and c is kept.
func (d *declarer) moveAckWait(ctx context.Context, tasks jetstream.Stream, c jetstream.Consumer, ackWait time.Duration) (jetstream.Consumer, error) {
	cfg := c.CachedInfo().Config
	cfg.AckWait = ackWait
	var u jetstream.Consumer
	err := d.call(ctx, "CONSUMER.CREATE."+forq.StreamTasks+"."+cfg.Durable, func(ctx context.Context) (err error) {
		u, err = tasks.UpdateConsumer(ctx, cfg)
		return err
	})
	change := fmt.Sprintf("from the old default ack wait %s to %s", forq.LegacyAckWait, ackWait)
	if errors.Is(err, ErrNotPermitted) {
		d.log.Warn(fmt.Sprintf("consumer %s on %s has the old default ack wait %s, and this user may not update it (%v): going on with it; run 'forq init' with an admin credential to move it to %s",
			cfg.Durable, forq.StreamTasks, forq.LegacyAckWait, err, ackWait))
		d.note(Item{Kind: "consumer", Name: cfg.Durable, State: Found, Lacks: []string{"ack wait " + ackWait.String()}})
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("update consumer %s on %s %s: %w", cfg.Durable, forq.StreamTasks, change, err)
	}
	d.note(Item{Kind: "consumer", Name: cfg.Durable, State: Upgraded, Added: []string{"ack wait " + change}})
	return u, nil
}

func (d *declarer) lookupConsumer(ctx context.Context, tasks jetstream.Stream, name, what string) (c jetstream.Consumer, err error) {
	err = d.call(ctx, "CONSUMER.INFO."+forq.StreamTasks+"."+name, func(ctx context.Context) (err error) {
		c, err = tasks.Consumer(ctx, name)
		return err
	})
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, lookupErr(what, err)
	}
	return c, err
}

// call is guard on d's connection, for a call that makes the request op.
func (d *declarer) call(ctx context.Context, op string, call func(context.Context) error) error {
	return guard(ctx, d.nc, []string{op}, call)
}
