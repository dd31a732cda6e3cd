package producer

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// counts are one queue's enqueue counts of a Producer.
type counts struct {
	enqueued, duplicates, failed atomic.Uint64
}

// queueCounts are a Producer's enqueue counts per queue, for its
// Collector. The zero value is ready to use.
type queueCounts struct {
	m sync.Map // queue → *counts
}

// of returns queue's counts, made on first use.
func (c *queueCounts) of(queue string) *counts {
	if v, ok := c.m.Load(queue); ok {
		return v.(*counts)
	}
	v, _ := c.m.LoadOrStore(queue, new(counts))
	return v.(*counts)
}

// The descriptions of a Producer's metrics.
var (
	descEnqueued = prometheus.NewDesc("forq_producer_enqueued_total",
		"Tasks this producer enqueued: stored by the broker, not as a duplicate.", []string{"queue"}, nil)
	descDuplicates = prometheus.NewDesc("forq_producer_duplicates_total",
		"Enqueues this producer made of a task the broker already had (same ID within the duplicate window, or a unique key held).", []string{"queue"}, nil)
	descFailed = prometheus.NewDesc("forq_producer_enqueue_failures_total",
		"Tasks this producer published that the broker did not store (an error, no acknowledgement, storage full).", []string{"queue"}, nil)
)

// collector is the prometheus.Collector of a Producer's counts.
type collector struct{ c *queueCounts }

// Describe implements prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descEnqueued
	ch <- descDuplicates
	ch <- descFailed
}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.c.m.Range(func(k, v any) bool {
		q, n := k.(string), v.(*counts)
		ch <- prometheus.MustNewConstMetric(descEnqueued, prometheus.CounterValue, float64(n.enqueued.Load()), q)
		ch <- prometheus.MustNewConstMetric(descDuplicates, prometheus.CounterValue, float64(n.duplicates.Load()), q)
		ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(n.failed.Load()), q)
		return true
	})
}

// Collector returns a prometheus.Collector of what this producer
// enqueued since it was made, per queue (the queues it enqueued to):
//
//	forq_producer_enqueued_total{queue}          tasks the broker stored
//	forq_producer_duplicates_total{queue}        enqueues of a task it already had
//	forq_producer_enqueue_failures_total{queue}  publishes it did not store
//
// Tasks refused before anything was published (bad input) are not
// counted. Register it on your registry, e.g.
// prometheus.MustRegister(p.Collector()); two producers in one registry
// need a label to tell them apart (prometheus.WrapRegistererWith).
func (p *Producer) Collector() prometheus.Collector { return collector{&p.counts} }
