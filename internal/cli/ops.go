package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// OpsFlags configure the HTTP endpoint of a long-running forq process.
type OpsFlags struct {
	MetricsPort int    `default:"0" help:"Serve /metrics (Prometheus), /healthz and /readyz on this port; 0 is off. A pool serves on this port and its child i on this port + 1 + i."`
	MetricsHost string `default:"127.0.0.1" help:"Address the /metrics, /healthz and /readyz endpoint listens on."`
}

// opsServer serves /metrics from reg and /healthz and /readyz from the
// checks (nil means always healthy/ready) until stop is called.
type opsServer struct {
	srv  *http.Server
	done chan struct{}
	Addr string
}

func startOps(log *slog.Logger, host string, port int, reg *prometheus.Registry, healthz, readyz func() error) (*opsServer, error) {
	if port <= 0 {
		return nil, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	check := func(f func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if f != nil {
				if err := f(); err != nil {
					http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
					return
				}
			}
			io.WriteString(w, "ok\n")
		}
	}
	mux.Handle("/healthz", check(healthz))
	mux.Handle("/readyz", check(readyz))
	o := &opsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{}), Addr: ln.Addr().String()}
	go func() {
		defer close(o.done)
		if err := o.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint failed", "err", err)
		}
	}()
	log.Info("serving /metrics, /healthz and /readyz", "addr", "http://"+o.Addr)
	return o, nil
}

func (o *opsServer) stop() {
	if o == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = o.srv.Shutdown(ctx)
	<-o.done
}

// newRegistry returns a registry with the Go runtime and process
// collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// workerMetrics counts a worker's tasks for Prometheus; it is the worker's
// consumer.Observer.
type workerMetrics struct {
	processed, failed, retried, dead, canceled, interrupted, expired *prometheus.CounterVec
	duration                                                         *prometheus.HistogramVec
}

func newWorkerMetrics(reg *prometheus.Registry) *workerMetrics {
	labels := []string{"queue", "type"}
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "forq", Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	m := &workerMetrics{
		processed:   counter("tasks_processed_total", "Tasks that succeeded."),
		failed:      counter("tasks_failed_total", "Task attempts that failed (retried or dead-lettered)."),
		retried:     counter("tasks_retried_total", "Failed task attempts that will be retried."),
		dead:        counter("tasks_dead_total", "Tasks dead-lettered to FORQ_DEAD."),
		canceled:    counter("tasks_canceled_total", "Tasks canceled before or while running."),
		interrupted: counter("tasks_interrupted_total", "Tasks handed back unfinished because the worker stopped."),
		expired:     counter("tasks_expired_total", "Tasks dropped unrun because their deadline had passed."),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "forq", Name: "task_duration_seconds", Help: "Time a task's handler ran, per delivery.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, labels),
	}
	reg.MustRegister(m.duration)
	return m
}

// TaskDone implements consumer.Observer.
func (m *workerMetrics) TaskDone(queue, typ string, o consumer.Outcome, d time.Duration) {
	switch o {
	case consumer.OutcomeSucceeded:
		m.processed.WithLabelValues(queue, typ).Inc()
	case consumer.OutcomeRetried:
		m.failed.WithLabelValues(queue, typ).Inc()
		m.retried.WithLabelValues(queue, typ).Inc()
	case consumer.OutcomeDead:
		m.failed.WithLabelValues(queue, typ).Inc()
		m.dead.WithLabelValues(queue, typ).Inc()
	case consumer.OutcomeCanceled:
		m.canceled.WithLabelValues(queue, typ).Inc()
	case consumer.OutcomeInterrupted:
		m.interrupted.WithLabelValues(queue, typ).Inc()
	case consumer.OutcomeExpired:
		m.expired.WithLabelValues(queue, typ).Inc()
	}
	if d > 0 {
		m.duration.WithLabelValues(queue, typ).Observe(d.Seconds())
	}
}

// queueCollector reports each queue's depth from the broker at scrape time.
type queueCollector struct {
	js      jetstream.JetStream
	queues  []string
	pending *prometheus.Desc
	acking  *prometheus.Desc
}

func newQueueCollector(js jetstream.JetStream, queues []string) *queueCollector {
	return &queueCollector{
		js: js, queues: queues,
		pending: prometheus.NewDesc("forq_queue_depth", "Tasks waiting in the queue (not yet delivered).", []string{"queue"}, nil),
		acking:  prometheus.NewDesc("forq_queue_running", "Tasks delivered to workers and not yet acknowledged.", []string{"queue"}, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.pending; ch <- c.acking }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, q := range c.queues {
		// A queue's figures are the sums over its priority levels.
		var pending, acking float64
		var err error
		for _, p := range forq.Priorities {
			cons, cerr := c.js.Consumer(ctx, forq.StreamTasks, forq.LevelConsumerName(q, p))
			if cerr != nil {
				if p == forq.PriorityNormal || !errors.Is(cerr, jetstream.ErrConsumerNotFound) {
					err = cerr
				}
				continue
			}
			i := cons.CachedInfo()
			if fresh, err := cons.Info(ctx); err == nil {
				i = fresh
			}
			pending += float64(i.NumPending)
			acking += float64(i.NumAckPending)
		}
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.pending, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, pending, q)
		ch <- prometheus.MustNewConstMetric(c.acking, prometheus.GaugeValue, acking, q)
	}
}

// metricsPort returns the port a worker serves on: under a pool, the
// port it was given plus its index in the pool.
func metricsPort(port int) int {
	if port <= 0 {
		return 0
	}
	if i, err := strconv.Atoi(os.Getenv("FORQ_POOL_INDEX")); err == nil {
		return port + i
	}
	return port
}
