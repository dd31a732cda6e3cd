package cli

import (
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
)

// PauseCmd is "forq pause".
type PauseCmd struct {
	ConnFlags `embed:""`

	Queue   string         `arg:"" help:"Queue to pause."`
	Until   string         `placeholder:"TIME" xor:"until" help:"Resume by itself at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z) instead of staying paused."`
	For     *time.Duration `placeholder:"DURATION" xor:"until" help:"Resume by itself after this long (e.g. 10m) instead of staying paused."`
	AckWait time.Duration  `default:"3s" help:"Ack wait of the queue's consumer, when the pause creates it (see 'forq work --ack-wait')."`
}

// Help explains what a pause does.
func (c *PauseCmd) Help() string {
	return `While a queue is paused its workers start none of its tasks; tasks already
running finish, and enqueues go on: tasks wait in the queue. Without --until
or --for it stays paused until 'forq resume'. It is JetStream's consumer
pause, shown by 'forq stats' (PAUSED) and 'nats consumer info FORQ_TASKS
<queue>'; a worker started meanwhile does not start anything either.

A queue that no worker has pulled from yet has no consumer: the pause
creates it (with --ack-wait), so that it holds for the workers that start
later.`
}

// Run pauses the queue.
func (c *PauseCmd) Run(env *Env) error {
	if err := forq.ValidateQueue(c.Queue); err != nil {
		return usageErr("%v", err)
	}
	until := admin.PauseForever
	switch {
	case c.Until != "":
		t, err := time.Parse(time.RFC3339, c.Until)
		if err != nil {
			return usageErr("--until %q: not a time like 2026-12-01T09:00:00Z", c.Until)
		}
		if !t.After(time.Now()) {
			return usageErr("--until %s has passed", c.Until)
		}
		until = t
	case c.For != nil && *c.For <= 0:
		// "--for 0s" used to pause until 'forq resume'.
		return usageErr("--for %s: must be positive", *c.For)
	case c.For != nil:
		until = time.Now().Add(*c.For)
	}
	if c.AckWait <= 0 {
		return usageErr("--ack-wait %s: must be positive", c.AckWait)
	}
	ctx, in, done, err := c.inspector("forq pause", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	got, err := in.Pause(ctx, c.Queue, until, c.AckWait)
	if err != nil {
		return err
	}
	if until.Equal(admin.PauseForever) {
		fmt.Fprintf(env.Stdout, "paused queue %s until 'forq resume %s'\n", c.Queue, c.Queue)
	} else {
		fmt.Fprintf(env.Stdout, "paused queue %s until %s\n", c.Queue, got.Local().Format(time.RFC3339))
	}
	return nil
}

// ResumeCmd is "forq resume".
type ResumeCmd struct {
	ConnFlags `embed:""`

	Queue string `arg:"" help:"Queue to resume."`
}

// Run resumes the queue.
func (c *ResumeCmd) Run(env *Env) error {
	if err := forq.ValidateQueue(c.Queue); err != nil {
		return usageErr("%v", err)
	}
	ctx, in, done, err := c.inspector("forq resume", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	paused, _, perr := in.Paused(ctx, c.Queue)
	if err := in.Resume(ctx, c.Queue); err != nil {
		return err
	}
	if paused || perr != nil {
		fmt.Fprintf(env.Stdout, "resumed queue %s\n", c.Queue)
	} else {
		fmt.Fprintf(env.Stdout, "queue %s was not paused\n", c.Queue)
	}
	return nil
}
