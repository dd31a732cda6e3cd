package bench_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/internal/bench"
	"github.com/forqhq/forq/internal/cli"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// childEnv makes this test binary run as the forq binary: forq bench's
// producer and worker processes are re-executions of it.
const childEnv = "FORQ_BENCH_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// Each growth measurement runs once, small, for forq and the baseline,
// and reports its figures: every throughput and latency positive, the
// embedded broker's memory read. No speed is asserted.
func TestGrowthFiguresReported(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(childEnv, "1")
	s, err := broker.New(broker.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if err := s.WaitReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Options{
		Command: []string{exe, "--log-level=warn"}, URL: s.ClientURL(),
		Tasks: 500, Workers: 1, PayloadSize: 64, Rate: 200, Samples: 10, Concurrency: 64,
		Baseline: true, Rounds: 1, EmbeddedBroker: true, Stderr: &stderr,
		Log:             slog.New(slog.DiscardHandler),
		Growth:          bench.GrowthOptions{Backlog: 2000, Payloads: []int{64, 4096}, LoadFractions: []float64{0.5}},
		DuplicateWindow: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("bench.Run: %v\nstderr of the processes:\n%s", err, stderr.String())
	}
	for _, m := range []struct {
		name string
		g    *bench.Growth
	}{{"forq", &rep.Growth}, {"baseline", &rep.Baseline.Growth}} {
		positive := func(what string, v float64) {
			t.Helper()
			if !(v > 0) {
				t.Errorf("%s: %s = %v, want > 0", m.name, what, v)
			}
		}
		g := m.g
		positive("broker_rss_mb", g.BrokerRSSMB)
		positive("broker_peak_rss_mb", g.BrokerPeakRSSMB)
		if b := g.Backlog; b == nil {
			t.Errorf("%s: no backlog figures", m.name)
		} else {
			positive("backlog.fill_per_sec", b.FillPerSec)
			positive("backlog.drain_per_sec", b.DrainPerSec)
			positive("backlog.drain_vs_tasks", b.DrainVsTasks)
			positive("backlog.drain_broker_cpu_us_per_task", b.DrainBrokerCPUUsPerTask)
			positive("backlog.broker_rss_before_mb", b.BrokerRSSBeforeMB)
			positive("backlog.broker_rss_full_mb", b.BrokerRSSFullMB)
			positive("backlog.broker_rss_drained_mb", b.BrokerRSSDrainedMB)
			if b.BrokerPeakRSSMB < b.BrokerRSSFullMB {
				t.Errorf("%s: backlog peak RSS %v MiB, want at least the full queue's %v", m.name, b.BrokerPeakRSSMB, b.BrokerRSSFullMB)
			}
		}
		for _, size := range []string{"64", "4096"} {
			p := g.Payloads[size]
			if p == nil {
				t.Errorf("%s: no figures for payloads of %s bytes", m.name, size)
				continue
			}
			positive("payloads."+size+".enqueue_batch_per_sec", p.EnqueueBatchPerSec)
			positive("payloads."+size+".enqueue_batch_mb_per_sec", p.EnqueueBatchMBPerSec)
			positive("payloads."+size+".drain_per_sec", p.DrainPerSec)
			positive("payloads."+size+".e2e_per_sec", p.E2EPerSec)
			positive("payloads."+size+".e2e_mb_per_sec", p.E2EMBPerSec)
		}
		if l := g.LoadFractions["0.5"]; l == nil {
			t.Errorf("%s: no figures at load 0.5", m.name)
		} else {
			positive("load_fractions.0.5.rate_per_sec", l.RatePerSec)
			positive("load_fractions.0.5.reached_per_sec", l.ReachedPerSec)
			positive("load_fractions.0.5.p50_ms", l.P50Ms)
			if l.P99Ms < l.P50Ms {
				t.Errorf("%s: load 0.5: p99 %v ms below p50 %v ms", m.name, l.P99Ms, l.P50Ms)
			}
		}
	}
	// Both modes got the same load: forq's capacity's half.
	if f, b := rep.LoadFractions["0.5"], rep.Baseline.LoadFractions["0.5"]; f != nil && b != nil && f.RatePerSec != b.RatePerSec {
		t.Errorf("load 0.5: forq at %v/s, the baseline at %v/s; want the same rate", f.RatePerSec, b.RatePerSec)
	}
	if rep.Settings.PayloadTasks["4096"] != 500 || rep.Settings.Backlog != 2000 {
		t.Errorf("settings: payload tasks %v, backlog %d; want 500 tasks of 4096 bytes and a backlog of 2000",
			rep.Settings.PayloadTasks, rep.Settings.Backlog)
	}
	var out bytes.Buffer
	if err := rep.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	if rep.Settings.DuplicateWindow != 10*time.Second {
		t.Errorf("settings: duplicate window %s, want the 10s asked", rep.Settings.DuplicateWindow)
	}
	for _, row := range []string{"duplicate window of the task streams: 10s", "backlog 2000: drain (tasks/s)", "broker RSS, full (MiB)", "4 KiB: end to end (MB/s)",
		"load 50% (", "broker RSS, after end to end (MiB)"} {
		if !strings.Contains(out.String(), row) {
			t.Errorf("table has no row %q:\n%s", row, out.String())
		}
	}
}

// Large payloads run fewer tasks, never fewer than 100.
func TestPayloadTasks(t *testing.T) {
	for _, c := range []struct{ tasks, size, want int }{
		{20000, 64, 20000},
		{20000, 4096, 20000},
		{20000, 262144, 512},
		{50, 262144, 50},
		{20000, 1 << 30, 100},
	} {
		if got := bench.PayloadTasks(c.tasks, c.size); got != c.want {
			t.Errorf("PayloadTasks(%d, %d) = %d, want %d", c.tasks, c.size, got, c.want)
		}
	}
}

// The streams a run creates take its duplicate window.
func TestRunDuplicateWindow(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(childEnv, "1")
	s, err := broker.New(broker.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if err := s.WaitReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := bench.Run(ctx, bench.Options{
		Command: []string{exe, "--log-level=warn"}, URL: s.ClientURL(),
		Tasks: 200, Workers: 1, PayloadSize: 64, Rate: 200, Samples: 5, Concurrency: 64,
		Rounds: 1, Stderr: &stderr, Log: slog.New(slog.DiscardHandler), DuplicateWindow: 7 * time.Second,
	}); err != nil {
		t.Fatalf("bench.Run: %v\nstderr of the processes:\n%s", err, stderr.String())
	}
	// Not embedded: the run leaves FORQ_TASKS, which it created.
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.Duplicates; got != 7*time.Second {
		t.Errorf("FORQ_TASKS after a run with DuplicateWindow 7s: duplicate window %s", got)
	}
}
