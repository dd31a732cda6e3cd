// Package lock is a distributed mutex on NATS JetStream: the Lock of
// Python's multiprocessing, shared by every process that reaches the
// broker.
//
// A lock is an entry in the KV bucket forq.BucketLocks under its key (see
// forq.KVKey), created atomically by the one holder that gets it and
// deleted by its Unlock. The entry has a per-key TTL (Options.TTL) that the
// holder refreshes every third of the TTL while it holds the lock, so the
// lock of a holder that died or lost the broker expires on its own. A
// holder that could not refresh in time has lost the lock: Lost is closed,
// and Unlock reports ErrNotHeld.
//
// Forq workers use the same locks for tasks enqueued with a lock key, so a
// program can take the lock of a key directly to keep out the tasks that
// carry it, and the other way round:
//
//	m, err := lock.New(ctx, js, "report-2026", lock.Options{})
//	if err != nil { ... }
//	if err := m.Lock(ctx); err != nil { ... }
//	defer m.Unlock(context.Background())
package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrLocked means the lock is held by another holder.
	ErrLocked = errors.New("lock is held by another holder")
	// ErrNotHeld means Unlock was called on a lock this Mutex does not
	// hold: it was never taken, already released, or lost (it expired and
	// perhaps another holder has it now).
	ErrNotHeld = errors.New("lock not held")
)

// MinTTL is the shortest TTL a lock can have: the broker expires keys with
// a precision of about a second.
const MinTTL = time.Second

// Options tune locks. The zero value is ready to use.
type Options struct {
	// TTL is how long a lock outlives its holder's last refresh; 0 means
	// forq.DefaultLockTTL. It is at least MinTTL. The holder refreshes
	// every TTL/3, so a holder that dies keeps others out for at most TTL.
	TTL time.Duration
	// Holder is stored as the lock's value, for people who look at the
	// bucket; empty means "pid <pid> on <host>".
	Holder string
	// Replicas of the bucket when this process is the first to declare
	// it; 0 means 1.
	Replicas int
}

// Bucket is the bucket of locks, from which Mutexes are made. It is safe
// for concurrent use.
type Bucket struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	ttl    time.Duration
	holder []byte
}

// Open returns the lock bucket, declaring forq.BucketLocks if it does not
// exist yet.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Bucket, error) {
	kv, err := topology.EnsureLocks(ctx, js, o.Replicas)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return FromKV(js, kv, o)
}

// FromKV returns a Bucket on kv, a handle to forq.BucketLocks that the
// caller has already opened.
func FromKV(js jetstream.JetStream, kv jetstream.KeyValue, o Options) (*Bucket, error) {
	if o.TTL == 0 {
		o.TTL = forq.DefaultLockTTL
	}
	if o.TTL < MinTTL {
		return nil, fmt.Errorf("lock: %w: TTL %s is shorter than %s", forq.ErrInvalidOption, o.TTL, MinTTL)
	}
	if o.Holder == "" {
		host, _ := os.Hostname()
		o.Holder = "pid " + strconv.Itoa(os.Getpid()) + " on " + host
	}
	return &Bucket{js: js, kv: kv, ttl: o.TTL, holder: []byte(o.Holder)}, nil
}

// TTL returns the TTL of the bucket's locks.
func (b *Bucket) TTL() time.Duration { return b.ttl }

// Mutex returns the mutex of key, not yet locked. The key is 1 to 256
// bytes without control characters; the error wraps forq.ErrInvalidTask
// otherwise.
func (b *Bucket) Mutex(key string) (*Mutex, error) {
	return b.MutexAs(key, "")
}

// MutexAs is Mutex with holder as the lock's value instead of the
// bucket's.
func (b *Bucket) MutexAs(key, holder string) (*Mutex, error) {
	if err := forq.ValidateKey("lock", key); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	h := b.holder
	if holder != "" {
		h = []byte(holder)
	}
	return &Mutex{b: b, key: key, kvKey: forq.KVKey(key), holder: h}, nil
}

// New opens the bucket and returns the mutex of key.
func New(ctx context.Context, js jetstream.JetStream, key string, o Options) (*Mutex, error) {
	b, err := Open(ctx, js, o)
	if err != nil {
		return nil, err
	}
	return b.Mutex(key)
}

// Mutex is one lock key, held at most once at a time across every process.
// One Mutex may be locked and unlocked many times, but not concurrently:
// like sync.Mutex, it is not meant to be shared by goroutines that compete
// for it; give each its own Mutex of the key.
type Mutex struct {
	b      *Bucket
	key    string
	kvKey  string
	holder []byte

	mu   sync.Mutex
	rev  uint64        // revision of our entry while held
	held bool          // set by a lock, cleared by Unlock or a loss
	stop chan struct{} // closed by Unlock to end the refresher
	done chan struct{} // closed when the refresher has ended
	lost chan struct{} // closed when the lock is lost
}

// Key returns the mutex's key.
func (m *Mutex) Key() string { return m.key }

// TryLock takes the lock if nobody holds it, and returns ErrLocked if
// somebody (this Mutex included) does.
func (m *Mutex) TryLock(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held {
		return fmt.Errorf("lock %s: %w (by this Mutex)", m.key, ErrLocked)
	}
	rev, err := m.b.kv.Create(ctx, m.kvKey, m.holder, jetstream.KeyTTL(m.b.ttl))
	if kvcas.IsConflict(err) {
		return fmt.Errorf("lock %s: %w", m.key, ErrLocked)
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", m.key, err)
	}
	m.rev, m.held = rev, true
	m.stop, m.done, m.lost = make(chan struct{}), make(chan struct{}), make(chan struct{})
	go m.refresh(m.stop, m.done, m.lost, time.Now().Add(m.b.ttl))
	return nil
}

// Lock waits until it has taken the lock or ctx ends. It watches the key,
// so a released lock is taken at once and an expired one within about a
// second of its expiry.
func (m *Mutex) Lock(ctx context.Context) error {
	for {
		err := m.TryLock(ctx)
		if !errors.Is(err, ErrLocked) {
			return err
		}
		m.mu.Lock()
		self := m.held
		m.mu.Unlock()
		if self {
			return err
		}
		if err := m.waitFree(ctx); err != nil {
			return fmt.Errorf("lock %s: %w", m.key, err)
		}
	}
}

// waitFree returns when the key looks free: deleted, expired, or after a
// while without news (a lost update), or with ctx's error.
func (m *Mutex) waitFree(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := m.b.kv.Watch(wctx, m.kvKey)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }() // its error says the watch was already stopped
	// Look again at least every TTL: a watch may miss an expiry while the
	// connection is down.
	t := time.NewTimer(m.b.ttl)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e != nil && e.Operation() != jetstream.KeyValuePut {
				return nil
			}
		}
	}
}

// Unlock releases the lock. It returns ErrNotHeld if this Mutex does not
// hold it, for it was never taken, already released or lost.
func (m *Mutex) Unlock(ctx context.Context) error {
	m.mu.Lock()
	if !m.held {
		m.mu.Unlock()
		return fmt.Errorf("unlock %s: %w", m.key, ErrNotHeld)
	}
	stop, done := m.stop, m.done
	m.mu.Unlock()
	close(stop)
	<-done // no refresh in flight: m.rev is the entry's revision
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.held {
		return fmt.Errorf("unlock %s: %w (lost before the unlock)", m.key, ErrNotHeld)
	}
	m.held = false
	err := m.b.kv.Delete(ctx, m.kvKey, jetstream.LastRevision(m.rev))
	if kvcas.IsConflict(err) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("unlock %s: %w (it expired)", m.key, ErrNotHeld)
	}
	if err != nil {
		// The entry expires on its own within the TTL.
		return fmt.Errorf("unlock %s: %w", m.key, err)
	}
	return nil
}

// Lost returns a channel that is closed if the lock is lost while held:
// its entry expired before a refresh got through, or was taken over. It
// is nil before the first lock; a new lock gives a new channel.
func (m *Mutex) Lost() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lost
}

// refresh rewrites the entry every TTL/3 with a fresh TTL, on the
// condition that it is still ours (its revision), until stop is closed.
// The lock is lost when the entry changed, or when no refresh got through
// before the TTL ran out.
func (m *Mutex) refresh(stop, done, lost chan struct{}, expires time.Time) {
	defer close(done)
	ttl := m.b.ttl
	t := time.NewTimer(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		m.mu.Lock()
		rev := m.rev
		m.mu.Unlock()
		sent := time.Now()
		ctx, cancel := context.WithDeadline(context.Background(), expires)
		nrev, err := kvcas.Put(ctx, m.b.js, m.b.kv.Bucket(), m.kvKey, m.holder, rev, ttl)
		cancel()
		switch {
		case err == nil:
			m.mu.Lock()
			m.rev = nrev
			m.mu.Unlock()
			expires = sent.Add(ttl)
			t.Reset(ttl / 3)
		case kvcas.IsConflict(err) || time.Now().After(expires):
			m.mu.Lock()
			m.held = false
			m.mu.Unlock()
			close(lost)
			return
		default:
			// The broker is slow or away: try again soon, while the
			// entry lives.
			t.Reset(min(ttl/10, time.Until(expires)/2) + time.Millisecond)
		}
	}
}
