package consumer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/unique"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/lock"
	"github.com/nats-io/nats.go/jetstream"
)

// Task locks (header Forq-Lock) and unique keys (Forq-Unique).
//
// A worker that receives a task with a lock key takes the key's lock in
// forq.BucketLocks (package lock) before it runs the task, and releases it
// when the task's delivery ends, however it ends. If another holder has
// the lock, the task is naked with a short delay and comes back later.
//
// Waiting for a lock is not an attempt: a task may wait for as long as the
// lock is busy and still get its MaxAttempts runs. Since the broker's
// delivery count grows with every nak, the runs of a task with a lock are
// counted instead: the worker that holds the lock increments a counter in
// forq.BucketLocks under "_runs.<task ID>" before it runs the task, and
// deletes it when the task ends. Attempts are then counted from runs as
// they are from deliveries without a lock (attempts.go): a run lost
// without an outcome is not a failure unless it ran alone.

// DefaultLockWait is the first delay before a task whose lock is busy is
// offered again; it doubles with each wait up to MaxLockWait.
const DefaultLockWait = 50 * time.Millisecond

// MaxLockWait bounds the delay before a task whose lock is busy is
// offered again.
const MaxLockWait = time.Second

// errLockLost is the cause given to a handler whose lock expired under it
// (its worker could not refresh it in time): another worker may now run a
// task with the same lock key, so this one stops and is retried.
var errLockLost = errors.New("task lock lost: not refreshed before its TTL")

// lockState is a worker's lock bucket, made on first use.
type lockState struct {
	once sync.Once
	b    *lock.Bucket
	err  error
}

// lockHold is a task's held lock, for the length of one delivery. Its
// watch cancels the handler if the lock is lost; the delivery owns it,
// and unlockTask stops it and waits for it.
type lockHold struct {
	mu     *lock.Mutex
	cancel context.CancelCauseFunc
	done   chan struct{}
	watch  sync.WaitGroup
	final  bool // the task ended: its run counter goes too
	runs   int  // the task's run, this one included
}

// checkLockConfig validates and defaults the lock settings of cfg.
func checkLockConfig(cfg *Config) error {
	if cfg.LockTTL < 0 || cfg.LockWait < 0 {
		return fmt.Errorf("consumer: %w: negative lock TTL or lock wait", forq.ErrInvalidOption)
	}
	if cfg.LockTTL > 0 && cfg.LockTTL < lock.MinTTL {
		return fmt.Errorf("consumer: %w: lock TTL %s is shorter than %s", forq.ErrInvalidOption, cfg.LockTTL, lock.MinTTL)
	}
	if cfg.LockWait == 0 {
		cfg.LockWait = DefaultLockWait
	}
	return nil
}

func (w *Worker) lockBucket() (*lock.Bucket, error) {
	w.locks.once.Do(func() {
		w.locks.b, w.locks.err = lock.FromKV(w.js, w.h.Locks, lock.Options{TTL: w.cfg.LockTTL})
	})
	return w.locks.b, w.locks.err
}

// takeLock takes the lock of key for the delivery's task before it runs.
// It returns oRun, with d.hard the context to run the handler in
// (canceled if the lock is lost) and t.lock.runs the task's run, this one
// included (what attempts.go counts from, as a delivery count would); or
// the outcome that ends the delivery: waiting for the lock, or failed.
func (w *Worker) takeLock(d *delivery, key string) outcome {
	t := d.t
	b, err := w.lockBucket()
	if err != nil {
		d.err = err
		return oFailed
	}
	mu, err := b.MutexAs(key, "task "+t.ID+" pid "+strconv.Itoa(w.pid)+" on "+w.name)
	if err != nil {
		d.err = fmt.Errorf("%w: %w", ErrPermanent, wire.BadLock(err))
		return oFailed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := mu.TryLock(ctx); err != nil {
		return w.waitLock(d, key, err)
	}
	n, err := w.countRun(ctx, t.ID)
	if err != nil {
		_ = mu.Unlock(ctx)
		return w.waitLock(d, key, fmt.Errorf("count the run: %w", err))
	}
	hctx, hcancel := context.WithCancelCause(d.hard)
	h := &lockHold{mu: mu, cancel: hcancel, done: make(chan struct{}), runs: n}
	h.watch.Go(func() {
		select {
		case <-mu.Lost():
			hcancel(errLockLost)
		case <-h.done:
		}
	})
	t.lock, d.hard = h, hctx
	return oRun
}

// waitLock ends a delivery whose lock could not be taken (why): the task
// is offered again after a delay, without counting an attempt.
func (w *Worker) waitLock(d *delivery, key string, why error) outcome {
	deliveries := 1
	if a, ok := wire.ParseAck(d.t.msg.Reply()); ok {
		deliveries = int(a.Delivered)
	}
	delay := w.cfg.LockWait
	for i := 1; i < deliveries && delay < MaxLockWait; i++ {
		delay *= 2
	}
	delay = min(delay, MaxLockWait)
	d.lockKey, d.err, d.delay = key, why, delay/2+rand.N(delay/2+1)
	if errors.Is(why, lock.ErrLocked) {
		return oLockBusy
	}
	return oLockTrouble
}

// unlockTask releases t's lock, if it holds one, at the end of its
// delivery.
func (w *Worker) unlockTask(log *taskLog, t *Task) {
	h := t.lock
	if h == nil {
		return
	}
	t.lock = nil
	close(h.done)
	h.watch.Wait()
	h.cancel(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.mu.Unlock(ctx); err != nil {
		log.get().Warn("releasing the task's lock failed; it expires on its own", "lock", h.mu.Key(), "err", err)
	}
	if h.final {
		if err := w.h.Locks.Delete(ctx, runsKey(t.ID)); err != nil {
			log.get().Debug("deleting the run counter failed; it expires on its own", "err", err)
		}
	}
}

func runsKey(id string) string { return "_runs." + forq.KVKey(id) }

// countRun adds one to the runs of task id and returns them.
func (w *Worker) countRun(ctx context.Context, id string) (int, error) {
	ttl := w.cfg.ResultTTL
	if ttl <= 0 {
		ttl = forq.DefaultResultTTL
	}
	key := runsKey(id)
	for range 5 {
		_, err := w.h.Locks.Create(ctx, key, []byte("1"), jetstream.KeyTTL(ttl))
		if err == nil {
			return 1, nil
		}
		if !kvcas.IsConflict(err) {
			return 0, err
		}
		e, err := w.h.Locks.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		n, _ := strconv.Atoi(string(e.Value()))
		n++
		_, err = kvcas.Put(ctx, w.js, forq.BucketLocks, key, []byte(strconv.Itoa(n)), e.Revision(), ttl)
		if err == nil {
			return n, nil
		}
		if !kvcas.IsConflict(err) {
			return 0, err
		}
	}
	return 0, errors.New("the run counter keeps changing")
}

// ended is told that task t reached a final state (succeeded, dead,
// canceled, expired): its unique key is released, and its run counter
// goes with its lock.
func (w *Worker) ended(log *taskLog, t *Task) {
	if t.lock != nil {
		t.lock.final = true
	}
	key := wire.UniqueKey(t.Header)
	if key == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := unique.New(w.js, w.h.Unique, record.New(w.h.Results)).Release(ctx, key, t.ID); err != nil {
		log.get().Warn("releasing the unique key failed; it expires on its own", "unique", key, "err", err)
	}
}
