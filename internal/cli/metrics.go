package cli

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/broker"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// buildInfo returns the forq_build_info gauge: 1, with the version, the
// commit and the Go release of this binary as labels (version.go).
func buildInfo() prometheus.Collector {
	ver, commit := "unknown", "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		ver = info.Main.Version
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				commit = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "forq", Name: "build_info", Help: "Always 1; its labels say which forq this process runs.",
		ConstLabels: prometheus.Labels{"version": ver, "commit": commit, "go_version": runtime.Version()},
	})
	g.Set(1)
	return g
}

// queueStatsTimeout bounds the reads of one scrape of the queues.
const queueStatsTimeout = 5 * time.Second

// queueCollector reports every queue's state on the broker at scrape
// time, from admin.Inspector: one figure per queue (and priority level)
// whoever scrapes, however many workers there are, and none needed.
type queueCollector struct {
	log *slog.Logger
	// inspector opens the Inspector; it is retried at each scrape until
	// it works (a cluster node has no JetStream until it has a leader).
	inspector func(context.Context) (*admin.Inspector, error)

	mu sync.Mutex
	in *admin.Inspector

	up, queued, oldest, running, unacked, retrying, scheduled, dead, paused, workers *prometheus.Desc
}

func newQueueCollector(log *slog.Logger, inspector func(context.Context) (*admin.Inspector, error)) *queueCollector {
	q, qp := []string{"queue"}, []string{"queue", "priority"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("forq_"+name, help, labels, nil)
	}
	return &queueCollector{
		log: log, inspector: inspector,
		up:        d("queue_stats_up", "1 if this scrape read the queues' state from the broker, 0 if it failed (the other forq_queue_* series are then missing).", nil),
		queued:    d("queue_queued", "Tasks waiting for a worker (not delivered yet), per priority level.", qp),
		oldest:    d("queue_oldest_task_age_seconds", "Age of the oldest task waiting for a worker (from its message's stream timestamp); 0 when none waits.", qp),
		running:   d("queue_running", "Tasks whose handlers live workers run now (from their status).", q),
		unacked:   d("queue_unacked", "Tasks delivered to a worker and not acknowledged yet: running and retrying.", q),
		retrying:  d("queue_retrying", "Tasks delivered and not running: waiting for a redelivery after a failure, hand-back, snooze or busy lock.", q),
		scheduled: d("queue_scheduled", "Delayed tasks not due yet.", q),
		dead:      d("queue_dead", "Dead letters of the queue in FORQ_DEAD.", q),
		paused:    d("queue_paused", "1 if the queue is paused, else 0.", q),
		workers:   d("queue_workers", "Live worker processes that serve the queue (from their status).", q),
	}
}

// Describe implements prometheus.Collector.
func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.queued, c.oldest, c.running, c.unacked, c.retrying, c.scheduled, c.dead, c.paused, c.workers} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A failed read is logged and
// reported as forq_queue_stats_up 0, not as a failed scrape: the
// process's other series still matter then.
func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), queueStatsTimeout)
	defer cancel()
	if err := c.collect(ctx, ch); err != nil {
		c.log.Warn("metrics: cannot read the queues' state", "err", err)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
}

func (c *queueCollector) collect(ctx context.Context, ch chan<- prometheus.Metric) error {
	in, err := c.open(ctx)
	if err != nil {
		return err
	}
	st, err := in.Stats(ctx)
	if err != nil {
		return err
	}
	// Read everything before sending anything: a failure sends nothing.
	oldest := make([]map[forq.Priority]time.Time, len(st.Queues))
	for i, qs := range st.Queues {
		if qs.Queued == 0 {
			continue
		}
		if oldest[i], err = in.OldestQueued(ctx, qs.Queue); err != nil {
			return err
		}
	}
	workers := map[string]int{}
	for _, w := range st.Workers {
		for _, q := range w.Queues {
			workers[q]++
		}
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for i, qs := range st.Queues {
		q := qs.Queue
		for _, p := range forq.Priorities {
			gauge(c.queued, float64(qs.QueuedByPriority[p.String()]), q, p.String())
			age := 0.0
			if t, ok := oldest[i][p]; ok {
				age = max(st.Time.Sub(t).Seconds(), 0)
			}
			gauge(c.oldest, age, q, p.String())
		}
		gauge(c.running, float64(qs.Running), q)
		gauge(c.unacked, float64(qs.Unacked), q)
		gauge(c.retrying, float64(qs.Retrying), q)
		gauge(c.scheduled, float64(qs.Scheduled), q)
		gauge(c.dead, float64(qs.Dead), q)
		gauge(c.paused, b2f(qs.Paused), q)
		gauge(c.workers, float64(workers[q]), q)
	}
	return nil
}

// open returns the collector's Inspector, opening it on first use.
func (c *queueCollector) open(ctx context.Context) (*admin.Inspector, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.in == nil {
		in, err := c.inspector(ctx)
		if err != nil {
			return nil, err
		}
		c.in = in
	}
	return c.in, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// brokerQueueMetrics returns the queues' collector of the embedded broker
// s, over an in-process connection that close closes; token, user and
// password are the broker's credentials, if any.
func brokerQueueMetrics(log *slog.Logger, s *broker.Server, token, user, password string) (c prometheus.Collector, closeConn func(), err error) {
	opts := []nats.Option{nats.InProcessServer(s.NATS()), nats.Name("forq broker metrics"), nats.MaxReconnects(-1)}
	if token != "" {
		opts = append(opts, nats.Token(token))
	}
	if user != "" {
		opts = append(opts, nats.UserInfo(user, password))
	}
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, nil, err
	}
	return newQueueCollector(log, func(ctx context.Context) (*admin.Inspector, error) {
		return admin.New(ctx, nc, admin.Config{})
	}), nc.Close, nil
}

// brokerRegistry returns the registry of the metrics endpoint of the
// embedded broker s (forq broker, forq run) with the queues' collector
// when port is on; close closes its connection.
func brokerRegistry(log *slog.Logger, port int, s *broker.Server, token, user, password string) (reg *prometheus.Registry, closeConn func(), err error) {
	reg = newRegistry()
	if port <= 0 {
		return reg, func() {}, nil
	}
	c, closeConn, err := brokerQueueMetrics(log, s, token, user, password)
	if err != nil {
		return nil, nil, err
	}
	reg.MustRegister(c)
	return reg, closeConn, nil
}
