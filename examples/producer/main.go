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
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// Count is the payload of a wordcount task.
type Count struct {
	Text string `json:"text"`
}

func main() {
	url := flag.String("url", envOr("FORQ_URL", forq.DefaultURL), "broker URL ($FORQ_URL)")
	queue := flag.String("queue", envOr("FORQ_QUEUE", "words"), "queue ($FORQ_QUEUE)")
	n := flag.Int("n", 10, "number of tasks")
	wait := flag.Bool("wait", false, "wait for each result and print it")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(*url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		log.Fatalf("connect to %s: %v", *url, err)
	}
	defer nc.Close()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		log.Fatal(err)
	}
	for i := range *n {
		payload, _ := json.Marshal(Count{Text: fmt.Sprintf("task %d of the example producer", i)})
		task := forq.Task{ID: forq.NewID(), Queue: *queue, Type: "wordcount", Payload: payload, Record: *wait}
		info, err := enqueue(ctx, p, task)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("enqueued", info.ID)
		if *wait {
			r, err := p.Wait(ctx, info.ID)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("result %s %s %s\n", r.ID, r.State, r.Result)
		}
	}
}

// enqueue retries a failed enqueue of the same task until ctx ends.
func enqueue(ctx context.Context, p *producer.Producer, t forq.Task) (*producer.Info, error) {
	for {
		info, err := p.Enqueue(ctx, t)
		if err == nil || ctx.Err() != nil {
			return info, err
		}
		log.Printf("enqueue %s: %v; retrying", t.ID, err)
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
