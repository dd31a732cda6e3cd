package lock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/lock"
	"github.com/nats-io/nats.go/jetstream"
)

func open(t *testing.T, o lock.Options) (*lock.Bucket, jetstream.JetStream) {
	t.Helper()
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lock.Open(t.Context(), js, o)
	if err != nil {
		t.Fatal(err)
	}
	return b, js
}

func mutex(t *testing.T, b *lock.Bucket, key string) *lock.Mutex {
	t.Helper()
	m, err := b.Mutex(key)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTryLockUnlock(t *testing.T) {
	b, _ := open(t, lock.Options{})
	ctx := t.Context()
	a, c := mutex(t, b, "k"), mutex(t, b, "k")
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.TryLock(ctx); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("second TryLock: %v, want ErrLocked", err)
	}
	if err := a.TryLock(ctx); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("TryLock by the holder: %v, want ErrLocked", err)
	}
	if err := c.Unlock(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Unlock by a non-holder: %v, want ErrNotHeld", err)
	}
	if err := mutex(t, b, "other").TryLock(ctx); err != nil {
		t.Fatalf("another key: %v", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("second Unlock: %v, want ErrNotHeld", err)
	}
	if err := c.TryLock(ctx); err != nil {
		t.Fatalf("TryLock after Unlock: %v", err)
	}
	if err := c.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	// A Mutex can be locked again.
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestKeysThatAreNotKVKeys(t *testing.T) {
	b, _ := open(t, lock.Options{})
	ctx := t.Context()
	for _, k := range []string{"user:42", "a b", "_runs.x", "é", ".dot", "x..y"} {
		m := mutex(t, b, k)
		if err := m.TryLock(ctx); err != nil {
			t.Fatalf("%q: %v", k, err)
		}
		if err := mutex(t, b, k).TryLock(ctx); !errors.Is(err, lock.ErrLocked) {
			t.Fatalf("%q locked twice: %v", k, err)
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"", "a\nb", string(make([]byte, 257))} {
		if _, err := b.Mutex(k); !errors.Is(err, forq.ErrInvalidTask) {
			t.Errorf("key %q: %v, want ErrInvalidTask", k, err)
		}
	}
}

func TestLockWaitsForUnlock(t *testing.T) {
	b, _ := open(t, lock.Options{})
	ctx := t.Context()
	a, c := mutex(t, b, "k"), mutex(t, b, "k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time)
	go func() {
		if err := c.Lock(ctx); err != nil {
			t.Error(err)
		}
		got <- time.Now()
	}()
	time.Sleep(300 * time.Millisecond)
	released := time.Now()
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	at := <-got
	if at.Before(released) {
		t.Fatal("Lock returned before the holder unlocked")
	}
	if d := at.Sub(released); d > time.Second {
		t.Errorf("Lock took %s after the unlock", d)
	}
	if err := c.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	// A canceled wait returns the context's error.
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.Lock(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with a deadline: %v", err)
	}
}

// The holder refreshes the lock past its TTL; a holder that stops
// refreshing (dies) loses it by expiry.
func TestRefreshAndExpiry(t *testing.T) {
	b, js := open(t, lock.Options{TTL: time.Second})
	ctx := t.Context()
	a := mutex(t, b, "k")
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := mutex(t, b, "k").TryLock(ctx); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("after 3 TTLs of a live holder: %v, want ErrLocked", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}

	// A dead holder: an entry nobody refreshes.
	kv, err := js.KeyValue(ctx, forq.BucketLocks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "dead", []byte("a dead holder"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m := mutex(t, b, "dead")
	if err := m.TryLock(ctx); !errors.Is(err, lock.ErrLocked) {
		t.Fatalf("TryLock on a held key: %v", err)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := m.Lock(lctx); err != nil {
		t.Fatalf("lock of a dead holder did not expire: %v", err)
	}
	d := time.Since(start)
	t.Logf("expired lock taken after %s", d)
	if d < 900*time.Millisecond {
		t.Errorf("taken after %s, before the TTL", d)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLost(t *testing.T) {
	b, js := open(t, lock.Options{TTL: time.Second})
	ctx := t.Context()
	a := mutex(t, b, "k")
	if a.Lost() != nil {
		t.Fatal("Lost before a lock is not nil")
	}
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, forq.BucketLocks)
	if err := kv.Delete(ctx, "k"); err != nil { // someone breaks the lock
		t.Fatal(err)
	}
	select {
	case <-a.Lost():
	case <-time.After(3 * time.Second):
		t.Fatal("Lost not closed after the entry was deleted")
	}
	if err := a.Unlock(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Unlock of a lost lock: %v, want ErrNotHeld", err)
	}
}

func TestMutualExclusion(t *testing.T) {
	b, _ := open(t, lock.Options{})
	ctx := t.Context()
	var in, peak, total atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		m := mutex(t, b, "shared")
		wg.Go(func() {
			for range 5 {
				if err := m.Lock(ctx); err != nil {
					t.Error(err)
					return
				}
				n := in.Add(1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				time.Sleep(2 * time.Millisecond)
				in.Add(-1)
				total.Add(1)
				if err := m.Unlock(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if peak.Load() != 1 || total.Load() != 40 {
		t.Fatalf("at most %d holders at once (want 1), %d sections (want 40)", peak.Load(), total.Load())
	}
}

func TestOptions(t *testing.T) {
	s := testutil.Broker(t)
	js, _ := jetstream.New(testutil.Connect(t, s.ClientURL()))
	if _, err := lock.Open(t.Context(), js, lock.Options{TTL: 100 * time.Millisecond}); !errors.Is(err, forq.ErrInvalidOption) {
		t.Fatalf("TTL below MinTTL: %v", err)
	}
	m, err := lock.New(t.Context(), js, "k", lock.Options{Holder: "me"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.TryLock(t.Context()); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(t.Context(), forq.BucketLocks)
	e, err := kv.Get(t.Context(), "k")
	if err != nil || string(e.Value()) != "me" {
		t.Fatalf("entry %v, %v; want value me", e, err)
	}
}
