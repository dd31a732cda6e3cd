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

	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/pool"
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
			_, _ = io.WriteString(w, "ok\n") // a health answer: a client gone is not ours to report
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
// collectors, and forq_build_info.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	return reg
}

// workerMetrics counts a worker's tasks for Prometheus; it is the worker's
// consumer.Observer (and consumer.StartObserver). Its type label is
// bounded: a type the worker has no handler for is "other".
type workerMetrics struct {
	processed, failed, retried, dead, canceled, interrupted, expired, snoozed *prometheus.CounterVec
	duration, wait                                                            *prometheus.HistogramVec
	// types are the task types the worker handles; set (setTypes) before
	// the worker runs, read only after.
	types map[string]bool
}

// taskBuckets are the buckets of the task histograms: x2 steps from 1 ms
// to about 9 minutes (524 s), and +Inf.
var taskBuckets = prometheus.ExponentialBuckets(0.001, 2, 20)

// otherType is the type label of a task of a type the worker does not
// handle, which anyone may publish: one series for them all.
const otherType = "other"

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
		snoozed:     counter("tasks_snoozed_total", "Task runs that snoozed (consumer.Snooze): put back for later, not an attempt."),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "forq", Name: "task_duration_seconds", Help: "Time a task's handler ran, per delivery.",
			Buckets: taskBuckets,
		}, labels),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "forq", Name: "task_queue_wait_seconds", Help: "Time from a task's enqueue (its message's stream timestamp; a delayed task's due time) to the start of its handler, on its first delivery.",
			Buckets: taskBuckets,
		}, labels),
	}
	reg.MustRegister(m.duration, m.wait)
	return m
}

// setTypes sets the task types the worker handles: the only values of
// the type label but "other".
func (m *workerMetrics) setTypes(types []string) {
	m.types = make(map[string]bool, len(types))
	for _, t := range types {
		m.types[t] = true
	}
}

// typ returns the type label of task type t.
func (m *workerMetrics) typ(t string) string {
	if m.types[t] {
		return t
	}
	return otherType
}

// TaskStarted implements consumer.StartObserver.
func (m *workerMetrics) TaskStarted(queue, typ string, wait time.Duration) {
	m.wait.WithLabelValues(queue, m.typ(typ)).Observe(wait.Seconds())
}

// TaskDone implements consumer.Observer.
func (m *workerMetrics) TaskDone(queue, typ string, o consumer.Outcome, d time.Duration) {
	typ = m.typ(typ)
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
	case consumer.OutcomeSnoozed:
		m.snoozed.WithLabelValues(queue, typ).Inc()
	}
	if d > 0 {
		m.duration.WithLabelValues(queue, typ).Observe(d.Seconds())
	}
}

// metricsPort returns the port a worker serves on: under a pool, the
// port it was given plus its index in the pool.
func metricsPort(port int) int {
	if port <= 0 {
		return 0
	}
	if i, err := strconv.Atoi(os.Getenv(pool.EnvIndex)); err == nil {
		return port + i
	}
	return port
}
