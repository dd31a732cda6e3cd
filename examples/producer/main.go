// Command producer is an example forq producer written against the library
// alone: it enqueues "wordcount" tasks, each a line of text, and prints the
// ID of each task once the broker has stored it.
//
//	go run ./examples/producer -n 100
//
// An enqueue that fails (the broker is restarting, say) is retried with the
// same task ID, so the broker drops it if the first try had in fact landed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/connect"
	"github.com/forqhq/forq/examples/wordcount"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// run enqueues the tasks; main exits 1 with its error, once its deferred
// calls have run.
func run() error {
	url := flag.String("url", envOr("FORQ_URL", forq.DefaultURL), "broker URL ($FORQ_URL)")
	queue := flag.String("queue", envOr("FORQ_QUEUE", "words"), "queue ($FORQ_QUEUE)")
	n := flag.Int("n", 10, "number of tasks")
	wait := flag.Bool("wait", false, "wait for each result and print it")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The credentials and TLS files come from the environment, as
	// forq pool passes them to its workers (FORQ_TOKEN, FORQ_CREDS,
	// FORQ_NKEY, FORQ_TLS_CA, ...); connect.Config reconnects forever.
	cfg, err := connect.FromEnv()
	if err != nil {
		return err
	}
	cfg.URLs, cfg.Name = []string{*url}, fmt.Sprintf("%s %d", "example producer", os.Getpid())
	nc, err := cfg.Connect(nats.ReconnectWait(100 * time.Millisecond))
	if err != nil {
		return err
	}
	defer nc.Close()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		return err
	}
	opts := []producer.Option{producer.WithQueue(*queue)}
	if *wait {
		opts = append(opts, producer.WithRecord())
	}
	for i := range *n {
		args := wordcount.Count{Text: fmt.Sprintf("task %d of the example producer", i)}
		info, err := enqueue(ctx, p, args, opts)
		if err != nil {
			return err
		}
		fmt.Println("enqueued", info.ID)
		if *wait {
			r, err := p.Wait(ctx, info.ID)
			if err != nil {
				return err
			}
			fmt.Printf("result %s %s %s\n", r.ID, r.State, r.Result)
		}
	}
	return nil
}

// enqueue retries a failed enqueue of the same task (same ID) until ctx
// ends.
func enqueue(ctx context.Context, p *producer.Producer, args wordcount.Count, opts []producer.Option) (*producer.Info, error) {
	id := forq.NewID()
	opts = append(opts[:len(opts):len(opts)], producer.WithID(id))
	for {
		info, err := p.EnqueueJSON(ctx, args, opts...)
		if err == nil || ctx.Err() != nil {
			return info, err
		}
		log.Printf("enqueue %s: %v; retrying", id, err)
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
