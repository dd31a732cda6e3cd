// Command worker is an example forq worker written against the library
// alone: it runs "wordcount" tasks and prints a line for each one done.
//
//	go run ./examples/worker
//
// It stops gracefully on Ctrl-C or SIGTERM: running tasks finish, the rest
// go back to the queue.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/nats-io/nats.go"
)

// Count is the payload of a wordcount task.
type Count struct {
	Text string `json:"text"`
}

func main() {
	url := flag.String("url", envOr("FORQ_URL", forq.DefaultURL), "broker URL ($FORQ_URL)")
	queue := flag.String("queue", envOr("FORQ_QUEUE", "words"), "queue ($FORQ_QUEUE)")
	concurrency := flag.Int("concurrency", 4, "tasks run at once")
	ackWait := flag.Duration("ack-wait", 30*time.Second, "redelivery delay of a dead worker's tasks")
	work := flag.Duration("work", 0, "time each task pretends to work")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(*url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		log.Fatalf("connect to %s: %v", *url, err)
	}
	defer nc.Close()
	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues:      []string{*queue},
		Concurrency: *concurrency,
		AckWait:     *ackWait,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		log.Fatal(err)
	}
	w.HandleFunc("wordcount", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		var c Count
		if err := json.Unmarshal(t.Payload, &c); err != nil {
			// A malformed payload will not get better: do not retry it.
			return nil, fmt.Errorf("payload: %v: %w", err, consumer.ErrPermanent)
		}
		select {
		case <-time.After(*work):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		n := len(strings.Fields(c.Text))
		fmt.Printf("done %s words=%d\n", t.ID, n)
		return json.Marshal(map[string]int{"words": n})
	})
	log.Printf("worker %d: queue %s, concurrency %d", os.Getpid(), *queue, *concurrency)
	if err := w.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
