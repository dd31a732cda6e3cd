package bench

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// A run with --queues measures, for forq and the baseline, the pool of one
// worker per queue end to end and idle, reports each figure, and leaves no
// consumer of those queues behind. No speed is asserted.
func TestManyQueuesReported(t *testing.T) {
	if testing.Short() {
		t.Skip("builds forq and runs worker processes")
	}
	exe := filepath.Join(t.TempDir(), "forq")
	build := exec.Command("go", "build", "-o", exe, "github.com/forqhq/forq/cmd/forq")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build forq: %v", err)
	}
	s := testutil.Broker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const queues = 3
	rep, err := Run(ctx, Options{
		Command: []string{exe, "--log-level=warn"}, URL: s.ClientURL(),
		Tasks: 300, Workers: 1, PayloadSize: 64, Rate: 200, Samples: 5, Concurrency: 16,
		Queues: queues, IdleTime: 500 * time.Millisecond, Baseline: true, Rounds: 1,
		EmbeddedBroker: true, Stderr: os.Stderr, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.Settings.Queues != queues {
		t.Errorf("settings.queues = %d, want %d", rep.Settings.Queues, queues)
	}
	for name, f := range map[string]*Figures{"forq": &rep.Figures, "baseline": rep.Baseline} {
		q := f.Queues
		if q == nil {
			t.Fatalf("%s: no queues figures", name)
		}
		if q.Queues != queues {
			t.Errorf("%s: queues = %d, want %d", name, q.Queues, queues)
		}
		for k, v := range map[string]float64{
			"e2e_per_sec": q.E2EPerSec, "one_queue_e2e_per_sec": q.OneQueueE2EPerSec, "e2e_ratio": q.E2ERatio,
			"idle_broker_cpu_pct": q.IdleBrokerCPUPct, "idle_seconds": q.IdleSeconds,
			"pool_startup_ms": q.PoolStartupMs, "worker_rss_mb": q.WorkerRSSMB,
		} {
			if v <= 0 {
				t.Errorf("%s: %s = %v, want a positive number", name, k, v)
			}
		}
		if q.OneQueueE2EPerSec != f.E2EPerSec {
			t.Errorf("%s: one_queue_e2e_per_sec = %v, want the main pool's e2e_per_sec %v", name, q.OneQueueE2EPerSec, f.E2EPerSec)
		}
		// In clock ticks of 10 ms: present, not necessarily positive.
		if q.IdleWorkersCPUPct < 0 {
			t.Errorf("%s: idle_workers_cpu_pct = %v", name, q.IdleWorkersCPUPct)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{"Q=3: end to end", "Q=3: ÷ one queue", "Q=3: idle, broker CPU"} {
		if !strings.Contains(table.String(), row) {
			t.Errorf("the table has no row %q:\n%s", row, table.String())
		}
	}

	// Nothing of the queues is left on the broker.
	js, err := jetstream.New(testutil.Connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range queues {
		for _, p := range forq.Priorities {
			name := wire.LevelConsumerName(QueueName(i), p)
			if _, err := js.Consumer(ctx, forq.StreamTasks, name); err == nil {
				t.Errorf("consumer %s is left on the broker", name)
			}
		}
	}
}
