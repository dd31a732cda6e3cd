package cli

import (
	"context"

	"github.com/forqhq/forq/admin"
)

// inspector connects to the broker and opens an admin.Inspector on it,
// with a context that SIGINT or SIGTERM cancels: what the commands that
// inspect or operate the queues need. done closes them.
func (c *ConnFlags) inspector(name string, env *Env, cfg admin.Config) (context.Context, *admin.Inspector, func(), error) {
	nc, err := c.connect(name, env.Log)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, stop := signalContext()
	in, err := admin.New(ctx, nc, cfg)
	if err != nil {
		stop()
		nc.Close()
		return nil, nil, nil, err
	}
	return ctx, in, func() { stop(); nc.Close() }, nil
}
