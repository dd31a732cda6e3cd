// Command worker is an example forq worker written against the library
// alone: it runs "wordcount" tasks and prints a line for each one done.
//
//	go run ./examples/worker
//
// It stops gracefully on Ctrl-C or SIGTERM: running tasks finish, the rest
// go back to the queue. Run by a supervisor that dies (forq pool -- worker,
// then the pool is SIGKILLed) it aborts instead: its running tasks go back
// to the queue at once (consumer.StopContext).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/connect"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/examples/wordcount"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// run runs the worker until it is stopped; main exits 1 with its error,
// once its deferred calls have run.
func run() error {
	url := flag.String("url", envOr("FORQ_URL", forq.DefaultURL), "broker URL ($FORQ_URL)")
	queue := flag.String("queue", envOr("FORQ_QUEUE", "words"), "queue ($FORQ_QUEUE)")
	concurrency := flag.Int("concurrency", 4, "tasks run at once")
	ackWait := flag.Duration("ack-wait", forq.DefaultAckWait, "redelivery delay of a dead worker's tasks")
	work := flag.Duration("work", 0, "time each task pretends to work")
	flag.Parse()

	// Like signal.NotifyContext for SIGINT and SIGTERM, and it tells a
	// supervisor's death from a stop: Run then aborts rather than drains.
	ctx, stop := consumer.StopContext(context.Background())
	defer stop()
	// The credentials and TLS files come from the environment, as
	// forq pool passes them to its workers (FORQ_TOKEN, FORQ_CREDS,
	// FORQ_NKEY, FORQ_TLS_CA, ...); connect.Config reconnects forever.
	cfg, err := connect.FromEnv()
	if err != nil {
		return err
	}
	cfg.URLs, cfg.Name = []string{*url}, fmt.Sprintf("%s %d", "example worker", os.Getpid())
	nc, err := cfg.Connect(nats.ReconnectWait(100 * time.Millisecond))
	if err != nil {
		return err
	}
	defer nc.Close()
	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues:      []string{*queue},
		Concurrency: *concurrency,
		AckWait:     *ackWait,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	// A payload that does not decode into a wordcount.Count is
	// dead-lettered at once: it would not decode on a retry either.
	consumer.HandleJSON(w, func(ctx context.Context, t *consumer.Task, c wordcount.Count) ([]byte, error) {
		select {
		case <-time.After(*work):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		r := c.Run()
		fmt.Printf("done %s words=%d\n", t.ID, r.Words)
		return json.Marshal(r)
	})
	log.Printf("worker %d: queue %s, concurrency %d", os.Getpid(), *queue, *concurrency)
	// Under "forq pool": tell the pool this worker runs, so that from now
	// on a crash is a task's doing, restarted at once, and not a failure to
	// start, which would count toward the pool's restart-storm limit. It
	// does nothing outside a pool.
	if err := pool.Ready(); err != nil {
		log.Printf("worker %d: %v", os.Getpid(), err)
	}
	return w.Run(ctx)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
