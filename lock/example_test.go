package lock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/lock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// embeddedBroker starts a broker inside this process, with its data in a
// temporary directory, and connects to it; stop closes the connection,
// stops the broker and removes its data. A program connects to a running
// broker instead: nats.Connect(forq.DefaultURL).
func embeddedBroker() (nc *nats.Conn, stop func()) {
	dir, err := os.MkdirTemp("", "forq-example-")
	if err != nil {
		panic(err)
	}
	b, err := broker.New(broker.Options{DataDir: dir})
	if err != nil {
		panic(err)
	}
	b.Start()
	if err := b.WaitReady(10 * time.Second); err != nil {
		panic(err)
	}
	if nc, err = nats.Connect(b.ClientURL()); err != nil {
		panic(err)
	}
	return nc, func() {
		nc.Close()
		b.Shutdown()
		_ = os.RemoveAll(dir)
	}
}

// Two holders of one key, as two processes would be: Lock waits while the
// other holds the lock and takes it as soon as it is released. Unlock in a
// defer is multiprocessing's try/finally around lock.acquire() and
// lock.release().
func ExampleMutex_Lock() {
	nc, stop := embeddedBroker()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Println(err)
		return
	}

	a, err := lock.New(ctx, js, "report-2026", lock.Options{Holder: "a"})
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := lock.New(ctx, js, "report-2026", lock.Options{Holder: "b"})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := a.Lock(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("a has the lock")
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		if err := b.Lock(ctx); err != nil { // waits for a's Unlock
			fmt.Println(err)
			return
		}
		defer func() { _ = b.Unlock(context.Background()) }()
		fmt.Println("b has the lock")
	}()
	fmt.Println("a releases it")
	if err := a.Unlock(ctx); err != nil {
		fmt.Println(err)
	}
	<-bDone
	// Output:
	// a has the lock
	// a releases it
	// b has the lock
}

// TryLock does not wait: it fails with ErrLocked while another holder has
// the lock.
func ExampleMutex_TryLock() {
	nc, stop := embeddedBroker()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Println(err)
		return
	}
	bucket, err := lock.Open(ctx, js, lock.Options{TTL: 3 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	a, err := bucket.MutexAs("report-2026", "a")
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := bucket.MutexAs("report-2026", "b")
	if err != nil {
		fmt.Println(err)
		return
	}

	fmt.Println("a:", a.TryLock(ctx))
	err = b.TryLock(ctx)
	fmt.Println("b:", err, errors.Is(err, lock.ErrLocked))
	fmt.Println("a unlocks:", a.Unlock(ctx))
	fmt.Println("b:", b.TryLock(ctx))
	fmt.Println("b unlocks:", b.Unlock(ctx))
	// Output:
	// a: <nil>
	// b: lock report-2026: lock is held by another holder true
	// a unlocks: <nil>
	// b: <nil>
	// b unlocks: <nil>
}
