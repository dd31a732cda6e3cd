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
	"github.com/forqhq/forq/lock"
	"github.com/nats-io/nats.go/jetstream"
)

// Task locks (forq.HeaderLock) and unique keys (forq.HeaderUnique).
//
// A worker that receives a task with a lock key takes the key's lock in
// forq.BucketLocks (package lock) before it runs the task, and releases it
// when the task's delivery ends, however it ends. If another holder has
// the lock, the task is naked with a short delay and comes back later.
//
// Waiting for a lock is not an attempt: a task may wait for as long as the
// lock is busy and still get its MaxAttempts runs. Since the broker's
// delivery count grows with every nak, the attempts of a task with a lock
// are counted by its runs instead: the worker that holds the lock
// increments a counter in forq.BucketLocks under "_runs.<task ID>" before
// it runs the task (a worker that dies mid-run has used an attempt, as
// without a lock), and deletes it when the task ends.

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

// lockHold is a task's held lock, for the length of one delivery.
type lockHold struct {
	mu     *lock.Mutex
	cancel context.CancelCauseFunc
	done   chan struct{}
	final  bool // the task ended: its run counter goes too
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

// takeLock takes the lock of key for task t before it runs. It returns the
// context to run the handler in (canceled if the lock is lost) and true;
// or false when the task was handed back to wait for the lock, or failed,
// and the delivery is over. On true, t.Attempt (and res.Attempts) count
// the task's runs, this one included.
func (w *Worker) takeLock(hard context.Context, log *taskLog, t *Task, res *forq.Result, key string) (context.Context, bool) {
	b, err := w.lockBucket()
	if err != nil {
		w.fail(log, t, res, err)
		return nil, false
	}
	mu, err := b.MutexAs(key, "task "+t.ID+" pid "+strconv.Itoa(w.pid)+" on "+w.host)
	if err != nil {
		w.fail(log, t, res, fmt.Errorf("%w: header %s: %w", ErrPermanent, forq.HeaderLock, err))
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := mu.TryLock(ctx); err != nil {
		w.waitLock(log, t, key, err)
		return nil, false
	}
	n, err := w.countRun(ctx, t.ID)
	if err != nil {
		_ = mu.Unlock(ctx)
		w.waitLock(log, t, key, fmt.Errorf("count the run: %w", err))
		return nil, false
	}
	t.Attempt, res.Attempts = n, n
	hctx, hcancel := context.WithCancelCause(hard)
	h := &lockHold{mu: mu, cancel: hcancel, done: make(chan struct{})}
	t.lock = h
	go func() {
		select {
		case <-mu.Lost():
			hcancel(errLockLost)
		case <-h.done:
		}
	}()
	return hctx, true
}

// waitLock hands t back to the broker to be offered again after a delay,
// without counting an attempt.
func (w *Worker) waitLock(log *taskLog, t *Task, key string, why error) {
	deliveries := 1
	if n, ok := numDelivered(t.msg.Reply()); ok {
		deliveries = int(n)
	}
	d := w.cfg.LockWait
	for i := 1; i < deliveries && d < MaxLockWait; i++ {
		d *= 2
	}
	d = min(d, MaxLockWait)
	d = d/2 + rand.N(d/2+1)
	if !errors.Is(why, lock.ErrLocked) {
		log.get().Warn("could not take the task's lock; retrying", "lock", key, "err", why, "retry_in", d)
	} else if w.log.Enabled(context.Background(), -4) {
		log.get().Debug("task's lock is busy; waiting", "lock", key, "retry_in", d)
	}
	if err := t.msg.NakWithDelay(d); err != nil {
		log.get().Warn("nak failed; the task will be redelivered after the ack wait", "err", err)
	}
	// Not a task finished, nor one claimed toward MaxTasks.
	w.processed.Add(-1)
	w.unclaim(1)
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
		if !lock.IsConflict(err) {
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
		_, err = lock.CASPut(ctx, w.js, forq.BucketLocks, key, []byte(strconv.Itoa(n)), e.Revision(), ttl)
		if err == nil {
			return n, nil
		}
		if !lock.IsConflict(err) {
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
	key := t.Header.Get(forq.HeaderUnique)
	if key == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k := forq.KVKey(key)
	e, err := w.h.Unique.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return
	}
	if err == nil {
		if string(e.Value()) != t.ID {
			return // claimed by a newer task
		}
		err = w.h.Unique.Delete(ctx, k, jetstream.LastRevision(e.Revision()))
		if lock.IsConflict(err) {
			return
		}
	}
	if err != nil {
		log.get().Warn("releasing the unique key failed; it expires on its own", "unique", key, "err", err)
	}
}
