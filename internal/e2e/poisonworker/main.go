// Command poisonworker is a worker process for the e2e tests, built on
// package consumer as a user's own worker binary would be. Besides a
// harmless "ok" task type it has one for each way a task can go wrong:
//
//	panic  the handler panics (an error, not a crash)
//	exit   the handler calls os.Exit(3): its process dies
//	segv   the handler writes to a page it may not touch: a real SIGSEGV,
//	       which the Go runtime cannot recover, kills its process
//	loop   the handler loops, ignoring its context, until the process
//	       ends (its task needs a timeout to be abandoned)
//
// It prints "start <pid>" when it starts and "ok <task ID>" for each ok
// task done, exits 0 on SIGTERM or SIGINT after a graceful stop, and 100
// (a pool's recycle code) when it abandoned a handler.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go"
)

func main() { os.Exit(run()) }

func run() int {
	url := flag.String("url", os.Getenv("FORQ_URL"), "broker URL ($FORQ_URL)")
	queue := flag.String("queue", forq.DefaultQueue, "queue")
	concurrency := flag.Int("concurrency", 4, "tasks run at once")
	ackWait := flag.Duration("ack-wait", 0, "ack wait of the queue's consumer when this worker declares it")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// SIGTERM/SIGINT stop it gracefully; its pool's death aborts it.
	ctx, stop := consumer.StopContext(context.Background())
	defer stop()
	nc, err := nats.Connect(*url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		log.Error("connect", "err", err)
		return 1
	}
	defer nc.Close()
	w, err := consumer.New(ctx, nc, consumer.Config{Queues: []string{*queue}, Concurrency: *concurrency, AckWait: *ackWait, Logger: log})
	if err != nil {
		log.Error("worker", "err", err)
		return 1
	}
	w.HandleFunc("ok", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		fmt.Printf("ok %s\n", t.ID)
		return nil, nil
	})
	w.HandleFunc("panic", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		panic("poison: panic in " + t.ID)
	})
	w.HandleFunc("exit", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		time.Sleep(20 * time.Millisecond) // let its neighbours start
		os.Exit(3)
		return nil, nil
	})
	w.HandleFunc("segv", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		time.Sleep(20 * time.Millisecond)
		page, err := syscall.Mmap(-1, 0, os.Getpagesize(), syscall.PROT_NONE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
		if err != nil {
			return nil, err
		}
		page[0] = 1 // SIGSEGV: "unexpected fault address", fatal
		return nil, nil
	})
	w.HandleFunc("loop", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		for {
			time.Sleep(50 * time.Millisecond) // never looks at ctx
		}
	})
	fmt.Printf("start %d\n", os.Getpid())
	// Under forq pool: from now on a crash is a task's doing, not a
	// failure to start (which counts toward the pool's storm limit).
	if err := pool.Ready(); err != nil {
		log.Warn("tell the pool this worker runs", "err", err)
	}
	err = w.Run(ctx)
	switch {
	case errors.Is(err, consumer.ErrAbandoned):
		log.Warn("abandoned a handler: exiting to be replaced")
		return 100
	case err != nil:
		log.Error("run", "err", err)
		return 1
	}
	return 0
}
