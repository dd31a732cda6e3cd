package bench

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/forqhq/forq/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// The enqueue phase measures the concurrent enqueue for both modes, each
// of its tasks stored once, and the report carries it in the figures, the
// best of rounds, the ratio and the table.
func TestConcurrentEnqueueReported(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{nc: nc, js: js}
	const single, conc, batch = 20, 10*ConcurrentProducers + 3, 50
	figs := map[string]*Figures{}
	for _, mode := range []string{ModeForq, ModeBaseline} {
		c, err := r.setup(t.Context(), mode)
		if err != nil {
			t.Fatalf("%s: setup: %v", mode, err)
		}
		res, err := RunProducer(t.Context(), nc, ProducerOptions{
			Mode: mode, Phase: PhaseEnqueue, Tasks: batch, Single: single, Concurrent: conc, PayloadSize: 64, BrokerPID: os.Getpid(),
		})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if res.SinglePerSec <= 0 || res.ConcurrentPerSec <= 0 || res.BatchPerSec <= 0 {
			t.Errorf("%s: one at a time %v, concurrent %v, batch %v tasks/s: want each positive", mode, res.SinglePerSec, res.ConcurrentPerSec, res.BatchPerSec)
		}
		if res.Single.ProducerUs <= 0 || res.Concurrent.ProducerUs <= 0 || res.Single.BrokerUs < 0 {
			t.Errorf("%s: CPU per task %+v one at a time, %+v concurrent: want the producer's positive", mode, res.Single, res.Concurrent)
		}
		i, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(single + conc + batch); i.NumPending != want {
			t.Errorf("%s: %d tasks waiting in the queue, want %d", mode, i.NumPending, want)
		}
		figs[mode] = best(nil, &Figures{EnqueuePerSec: res.SinglePerSec, EnqueueConcurrentPerSec: res.ConcurrentPerSec, EnqueueBatchPerSec: res.BatchPerSec})
		figs[mode] = best(figs[mode], &Figures{EnqueueConcurrentPerSec: res.ConcurrentPerSec / 2})
		if figs[mode].EnqueueConcurrentPerSec != res.ConcurrentPerSec {
			t.Errorf("%s: best of rounds %v, want %v", mode, figs[mode].EnqueueConcurrentPerSec, res.ConcurrentPerSec)
		}
		r.teardown(mode)
	}
	rep := &Report{Settings: Settings{Producers: ConcurrentProducers}, Figures: *figs[ModeForq], Baseline: figs[ModeBaseline]}
	rep.Ratio = ratio(figs[ModeForq], figs[ModeBaseline])
	if v, ok := rep.Ratio["enqueue_concurrent_per_sec"].(float64); !ok || v <= 0 {
		t.Errorf("ratio enqueue_concurrent_per_sec = %v, want a positive number", rep.Ratio["enqueue_concurrent_per_sec"])
	}
	var out bytes.Buffer
	if err := rep.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "enqueue, 1 at a time × 16 (tasks/s)") {
		t.Errorf("the table has no row for the concurrent enqueue:\n%s", out.String())
	}
}
