package cli

import (
	"fmt"

	"github.com/forqhq/forq/admin"
)

// RecordCmd is "forq record": a queue-wide result retention.
type RecordCmd struct {
	ConnFlags `embed:""`

	Queue string `arg:"" help:"Queue whose every task gets its state and result recorded."`
	Off   bool   `help:"Stop recording every task (tasks enqueued with --record still are)."`
}

// Run sets or clears the queue's record flag.
func (c *RecordCmd) Run(env *Env) error {
	ctx, in, done, err := c.inspector("forq record", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	if err := in.SetRecordAll(ctx, c.Queue, !c.Off); err != nil {
		return enqueueErr(err)
	}
	if c.Off {
		fmt.Fprintf(env.Stdout, "queue %s: only tasks enqueued with --record are recorded\n", c.Queue)
	} else {
		fmt.Fprintf(env.Stdout, "queue %s: every task's state and result is recorded (for the result TTL)\n", c.Queue)
	}
	return nil
}
