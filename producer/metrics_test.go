package producer_test

import (
	"context"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/prometheus/client_golang/prometheus"
)

// The producer's collector counts, per queue, the tasks the broker
// stored and the duplicates, by Enqueue and EnqueueMany alike.
func TestCollectorCountsEnqueues(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.Collector())
	for range 2 {
		if _, err := p.Enqueue(t.Context(), forq.Task{Type: "t", Queue: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // the second is a duplicate
		if _, err := p.Enqueue(t.Context(), forq.Task{Type: "t", Queue: "a"}, producer.WithID("same")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.EnqueueMany(t.Context(), []forq.Task{{Type: "t", Queue: "b"}, {Type: "t", Queue: "b"}, {Type: "t", Queue: "b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.EnqueueMany(t.Context(), []forq.Task{{ID: "same", Type: "t", Queue: "a"}, {ID: "other", Type: "t", Queue: "a"}}); err != nil {
		t.Fatal(err)
	}
	// With the broker gone, a publish fails.
	s.Shutdown()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, err := p.Enqueue(ctx, forq.Task{Type: "t", Queue: "c"}); err == nil {
		t.Fatal("enqueue with the broker down: no error")
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.Metric {
			got[f.GetName()+"/"+m.Label[0].GetValue()] = m.Counter.GetValue()
		}
	}
	want := map[string]float64{
		"forq_producer_enqueued_total/a": 4, "forq_producer_duplicates_total/a": 2, "forq_producer_enqueue_failures_total/a": 0,
		"forq_producer_enqueued_total/b": 3, "forq_producer_duplicates_total/b": 0, "forq_producer_enqueue_failures_total/b": 0,
		"forq_producer_enqueued_total/c": 0, "forq_producer_duplicates_total/c": 0, "forq_producer_enqueue_failures_total/c": 1,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %v, want %v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
}
