package cli

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/internal/ui"
	"github.com/prometheus/client_golang/prometheus"
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
	UI         bool   `name:"ui" help:"Serve the web dashboard too (see forq ui), on --ui-addr."`
	UIFlags    `embed:""`
}

// Run runs the broker and the pool until SIGINT or SIGTERM, then stops the
// pool (its workers drain) before the broker.
func (c *RunCmd) Run(env *Env) error {
	if c.UI {
		if err := ui.CheckAddr(c.UIAddr, c.UIToken); err != nil {
			return usageErr("%v", err)
		}
	}
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
	banner(env, "forq run: broker at %s, data in %s", s.ClientURL(), s.DataDir())
	try := "forq enqueue echo --payload hello --wait"
	if c.Port != 4222 {
		try += " --url " + s.ClientURL()
	}
	banner(env, "forq run: workers on queue %s; try: %s", strings.Join(c.Queue, ","), try)
	watching := watchStorage(ctx, env, s)
	defer func() { stop(); <-watching }()
	cf := ConnFlags{URL: s.ClientURL(), ConnectTimeout: 10e9}
	// The pool's endpoint (--metrics-port) reports the queues too: this
	// command's broker is theirs.
	var extra []prometheus.Collector
	if c.MetricsPort > 0 {
		qc, closeMetrics, err := brokerQueueMetrics(env.Log, s, "", "", "")
		if err != nil {
			return err
		}
		defer closeMetrics()
		extra = append(extra, qc)
	}
	if c.UI {
		nc, err := nats.Connect("", nats.InProcessServer(s.NATS()), nats.Name("forq run dashboard"), nats.MaxReconnects(-1))
		if err != nil {
			return err
		}
		defer nc.Close()
		uiCtx, stopUI := context.WithCancel(ctx)
		uiDone, err := startUI(uiCtx, env, "forq run", nc, c.UIFlags)
		if err != nil {
			stopUI()
			return err
		}
		defer func() { stopUI(); <-uiDone }()
	}
	return runPool(ctx, env, cf, c.TopologyFlags, c.WorkerFlags, c.PoolFlags, nil, extra...)
}
