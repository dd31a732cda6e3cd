package bench

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// The results phase reports its throughput for forq (WithRecord and
// WaitMany) and for the baseline (a KV put per task, watched), with real
// workers on a real broker; it reports the tasks' last stream sequence,
// which the queue's consumer has then acked up to.
func TestResultsPhaseReportsThroughput(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{nc: nc, js: js}
	for _, mode := range []string{ModeForq, ModeBaseline} {
		t.Run(mode, func(t *testing.T) {
			c, err := r.setup(t.Context(), mode)
			if err != nil {
				t.Fatal(err)
			}
			defer r.teardown(mode)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() {
				done <- RunWorker(ctx, testutil.Connect(t, s.ClientURL()), WorkerOptions{Mode: mode, Concurrency: 64, Log: slog.New(slog.DiscardHandler)})
			}()
			defer func() { cancel(); <-done }()
			pctx, pcancel := context.WithTimeout(t.Context(), time.Minute)
			defer pcancel()
			res, err := RunProducer(pctx, testutil.Connect(t, s.ClientURL()), ProducerOptions{Mode: mode, Phase: PhaseResults, Tasks: 300, PayloadSize: 64})
			if err != nil {
				t.Fatal(err)
			}
			if res.ResultsPerSec <= 0 || res.LastSeq == 0 {
				t.Fatalf("results phase: %+v, want a throughput and a last sequence", res)
			}
			if err := r.drained(pctx, c, res.LastSeq); err != nil {
				t.Fatal(err)
			}
			rep := &Report{Figures: Figures{E2EPerSec: 1, E2EResultsPerSec: res.ResultsPerSec}}
			if b := best(&Figures{}, &rep.Figures); b.E2EResultsPerSec != res.ResultsPerSec {
				t.Fatalf("best of rounds keeps e2e_results_per_sec %v, want %v", b.E2EResultsPerSec, res.ResultsPerSec)
			}
			var out strings.Builder
			if err := rep.WriteTable(&out); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"end to end, results waited for (tasks/s)", "end to end with results ÷ without, forq: "} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("the table has no %q:\n%s", want, out.String())
				}
			}
		})
	}
}
