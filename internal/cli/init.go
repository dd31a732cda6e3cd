package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
)

// InitCmd declares forq's streams, KV buckets and the consumers of the
// given queues, as an admin does once for users that may not create them.
type InitCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`

	Queue   []string      `short:"q" default:"default" help:"Queue(s) whose consumers to declare (every priority level of each), comma-separated."`
	AckWait time.Duration `default:"3s" help:"Ack wait of the consumers it creates (as forq work --ack-wait)."`
	Timeout time.Duration `default:"30s" help:"How long to wait for the broker to answer before giving up."`
}

// Validate checks the flags of forq init.
func (c *InitCmd) Validate() error {
	if len(c.Queue) == 0 {
		return usageErr("--queue: invalid queue name: empty name")
	}
	for i, q := range c.Queue {
		c.Queue[i] = strings.TrimSpace(q)
	}
	if err := validateQueues(c.Queue); err != nil {
		return err
	}
	if c.AckWait <= 0 {
		return usageErr("--ack-wait %s: must be positive", c.AckWait)
	}
	if c.Timeout <= 0 {
		return usageErr("--timeout %s: must be positive", c.Timeout)
	}
	return nil
}

// Run declares everything and prints, line by line, what it created, what
// was there already, what it upgraded and every setting that differs from
// the flags. It changes no existing setting: differences make it exit 1
// after the listing.
func (c *InitCmd) Run(env *Env) error {
	nc, err := c.connect("forq init", env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	sig, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(sig, c.Timeout)
	defer cancel()
	rep, err := topology.Init(ctx, js, topology.Options{Replicas: c.Replicas, ResultTTL: c.ResultTTL, DuplicateWindow: c.DuplicateWindow, Logger: env.Log}, c.Queue, c.AckWait)
	printReport(env.Stdout, rep)
	if err != nil {
		return err
	}
	if n := rep.Differs(); n > 0 {
		return fmt.Errorf("%d of forq's streams, buckets or consumers differ from what the flags ask (listed above); forq init changes no existing setting: run it with the flags they were made with, or change them with the nats CLI", n)
	}
	return nil
}

// printReport writes one line per item of rep, then one per difference.
func printReport(w io.Writer, rep *topology.Report) {
	if rep == nil {
		return
	}
	for _, it := range rep.Items {
		line := fmt.Sprintf("%-8s %s %s", it.State, it.Kind, it.Name)
		if len(it.Added) > 0 {
			line += ": added " + strings.Join(it.Added, ", ")
		}
		fmt.Fprintln(w, line)
		for _, d := range it.Differs {
			fmt.Fprintf(w, "         differs: %s\n", d)
		}
		for _, l := range it.Lacks {
			fmt.Fprintf(w, "         lacks: %s (this user may not add it)\n", l)
		}
	}
}
