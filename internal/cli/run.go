package cli

import (
	"fmt"
	"strings"

	"github.com/forqhq/forq/broker"
)

// RunCmd is "forq run": the embedded broker and a pool of workers in one
// command.
type RunCmd struct {
	TopologyFlags `embed:""`
	WorkerFlags   `embed:""`
	PoolFlags     `embed:""`

	DataDir    string `default:"forq-data" help:"Directory of JetStream's files (created if missing)."`
	Port       int    `default:"4222" help:"Port for NATS clients (producers: --url nats://127.0.0.1:PORT); 0 picks a free one."`
	HTTPPort   int    `default:"0" help:"Port of the NATS monitoring endpoints; 0 is off."`
	SyncAlways bool   `help:"fsync every write before acknowledging it."`
}

// Run runs the broker and the pool until SIGINT or SIGTERM, then stops the
// pool (its workers drain) before the broker.
func (c *RunCmd) Run(env *Env) error {
	s, err := broker.New(broker.Options{DataDir: c.DataDir, Port: c.Port, HTTPPort: c.HTTPPort, SyncAlways: c.SyncAlways})
	if err != nil {
		return err
	}
	s.Start()
	defer s.Shutdown()
	if err := s.WaitReady(0); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	fmt.Fprintf(env.Stdout, "forq run: broker at %s, data in %s\n", s.ClientURL(), s.DataDir())
	fmt.Fprintf(env.Stdout, "forq run: workers on queue %s; try: forq enqueue echo --payload hello --wait", strings.Join(c.Queue, ","))
	if c.Port != 4222 {
		fmt.Fprintf(env.Stdout, " --url %s", s.ClientURL())
	}
	fmt.Fprintln(env.Stdout)
	cf := ConnFlags{URL: s.ClientURL(), ConnectTimeout: 10e9}
	return runPool(ctx, env, cf, c.TopologyFlags, c.WorkerFlags, c.PoolFlags, nil)
}
