package bench

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/forqhq/forq"
)

// WriteTable writes the report as a table: one row per figure, forq's
// value, and with a baseline its value and the ratio forq ÷ baseline.
func (r *Report) WriteTable(w io.Writer) error {
	for _, l := range r.settingsLines() {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if r.Baseline != nil {
		fmt.Fprintf(tw, "%-36s\tforq\tJetStream\tforq/JetStream\t\n", "")
	} else {
		fmt.Fprintf(tw, "%-36s\tforq\t\n", "")
	}
	for _, x := range r.rows() {
		name := fmt.Sprintf("%-36s", x.name)
		if r.Baseline == nil {
			fmt.Fprintf(tw, "%s\t%s\t\n", name, num(x.forq, x.digits))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, num(x.forq, x.digits), num(x.base, x.digits), x.ratio())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	f, b := &r.Figures, r.Baseline
	if f.E2EPerSec > 0 && f.E2EResultsPerSec > 0 {
		fmt.Fprintf(w, "\nend to end with results ÷ without, forq: %.2f", f.E2EResultsPerSec/f.E2EPerSec)
		if b != nil && b.E2EPerSec > 0 && b.E2EResultsPerSec > 0 {
			fmt.Fprintf(w, "; JetStream: %.2f", b.E2EResultsPerSec/b.E2EPerSec)
		}
		fmt.Fprintln(w)
	}
	return nil
}

// settingsLines describe the run: what it measured, and on what.
func (r *Report) settingsLines() []string {
	s := r.Settings
	sync := "default (written to the OS before the ack, fsync every 2 min)"
	if s.SyncAlways {
		sync = "fsync every write"
	}
	if !s.Embedded {
		sync = "the broker's own setting"
	}
	l := []string{
		fmt.Sprintf("forq bench: %d tasks of %d bytes, %d worker processes (concurrency %d each; the baseline fetches batches of %d); best of %d round(s)",
			s.Tasks, s.PayloadSize, s.Workers, s.Concurrency, s.Concurrency, s.Rounds),
		fmt.Sprintf("broker: %s; fsync: %s", s.Broker, sync),
	}
	if s.BaselineHeaders {
		l = append(l, "the baseline publishes forq's headers (Nats-Msg-Id, Forq-Type)")
	}
	if s.DuplicateWindow > 0 && s.DuplicateWindow != forq.DefaultDuplicateWindow {
		l = append(l, fmt.Sprintf("duplicate window of the task streams: %s (the default %s)", s.DuplicateWindow, forq.DefaultDuplicateWindow))
	}
	switch {
	case s.GOMAXPROCS != "":
		l = append(l, fmt.Sprintf("worker processes: GOMAXPROCS=%s from the environment", s.GOMAXPROCS))
	case s.BaselineCPUShare:
		l = append(l, "worker processes: GOMAXPROCS = CPUs / workers for both, as forq pool sets it")
	default:
		l = append(l, "worker processes: forq's with GOMAXPROCS = CPUs / workers, as forq pool sets it; the baseline's with Go's default")
	}
	l = append(l, fmt.Sprintf("machine: %d CPUs, %s", s.CPUs, s.CPUModel))
	return append(l, r.growthSettingsLines()...)
}

// figureRow is one row of the table: a figure of forq and of the baseline
// (0 without one), printed with digits decimals.
type figureRow struct {
	name       string
	forq, base float64
	digits     int
}

// ratio returns forq ÷ baseline with two decimals, "-" without a baseline
// figure.
func (x figureRow) ratio() string {
	if x.base == 0 {
		return "-"
	}
	return strconv.FormatFloat(x.forq/x.base, 'f', 2, 64)
}

// rows returns the rows of the table, in order.
func (r *Report) rows() (out []figureRow) {
	s := r.Settings
	row := func(name string, f, b float64, digits int) {
		out = append(out, figureRow{name, f, b, digits})
	}
	f, b := &r.Figures, r.Baseline
	if b == nil {
		b = &Figures{}
	}
	row("enqueue, one at a time (tasks/s)", f.EnqueuePerSec, b.EnqueuePerSec, 0)
	row(fmt.Sprintf("enqueue, 1 at a time × %d (tasks/s)", s.Producers), f.EnqueueConcurrentPerSec, b.EnqueueConcurrentPerSec, 0)
	row("enqueue, batch (tasks/s)", f.EnqueueBatchPerSec, b.EnqueueBatchPerSec, 0)
	row("drain a full queue (tasks/s)", f.DrainPerSec, b.DrainPerSec, 0)
	row("end to end (tasks/s)", f.E2EPerSec, b.E2EPerSec, 0)
	row("end to end, results waited for (tasks/s)", f.E2EResultsPerSec, b.E2EResultsPerSec, 0)
	row("latency at idle, p50 (ms)", f.LatencyP50Ms, b.LatencyP50Ms, 3)
	row("latency at idle, p99 (ms)", f.LatencyP99Ms, b.LatencyP99Ms, 3)
	row(fmt.Sprintf("latency at %g/s, p50 (ms)", s.Rate), f.LoadLatencyP50Ms, b.LoadLatencyP50Ms, 3)
	row(fmt.Sprintf("latency at %g/s, p99 (ms)", s.Rate), f.LoadLatencyP99Ms, b.LoadLatencyP99Ms, 3)
	row("  load reached (tasks/s)", f.LoadPerSec, b.LoadPerSec, 0)
	row("worker RSS, idle (MiB)", f.WorkerRSSMB, b.WorkerRSSMB, 1)
	row("worker RSS, after load (MiB)", f.WorkerRSSLoadedMB, b.WorkerRSSLoadedMB, 1)
	row(fmt.Sprintf("pool start-up, %d workers (ms)", s.Workers), f.PoolStartupMs, b.PoolStartupMs, 1)
	if f.BrokerCPUUsPerTask > 0 {
		row("CPU per task, broker (µs)", f.BrokerCPUUsPerTask, b.BrokerCPUUsPerTask, 1)
	}
	row("CPU per task, producer+workers (µs)", f.ClientCPUUsPerTask, b.ClientCPUUsPerTask, 1)
	if f.DrainBrokerCPUUsPerTask > 0 {
		row("  in the drain, broker (µs)", f.DrainBrokerCPUUsPerTask, b.DrainBrokerCPUUsPerTask, 1)
	}
	row("  in the drain, workers (µs)", f.DrainWorkerCPUUsPerTask, b.DrainWorkerCPUUsPerTask, 1)
	row("  enqueue 1 at a time, producer (µs)", f.EnqueueProducerCPUUs, b.EnqueueProducerCPUUs, 1)
	if f.EnqueueBrokerCPUUs > 0 {
		row("  enqueue 1 at a time, broker (µs)", f.EnqueueBrokerCPUUs, b.EnqueueBrokerCPUUs, 1)
	}
	row(fmt.Sprintf("  enqueue 1 × %d, producer (µs)", s.Producers), f.EnqueueConcurrentProducerCPUUs, b.EnqueueConcurrentProducerCPUUs, 1)
	if f.EnqueueConcurrentBrokerCPUUs > 0 {
		row(fmt.Sprintf("  enqueue 1 × %d, broker (µs)", s.Producers), f.EnqueueConcurrentBrokerCPUUs, b.EnqueueConcurrentBrokerCPUUs, 1)
	}
	if f.E2EBrokerCPUUsPerTask > 0 {
		row("  end to end, broker (µs)", f.E2EBrokerCPUUsPerTask, b.E2EBrokerCPUUsPerTask, 1)
	}
	row("  end to end, producer+workers (µs)", f.E2EClientCPUUsPerTask, b.E2EClientCPUUsPerTask, 1)
	if f.E2EResultsBrokerCPUUsPerTask > 0 {
		row("  with results, broker (µs)", f.E2EResultsBrokerCPUUsPerTask, b.E2EResultsBrokerCPUUsPerTask, 1)
	}
	row("  with results, producer+workers (µs)", f.E2EResultsClientCPUUsPerTask, b.E2EResultsClientCPUUsPerTask, 1)
	if f.BrokerRSSMB > 0 {
		row("broker RSS, after end to end (MiB)", f.BrokerRSSMB, b.BrokerRSSMB, 1)
		row("broker RSS, peak (MiB)", f.BrokerPeakRSSMB, b.BrokerPeakRSSMB, 1)
	}
	for _, n := range slices.Sorted(func(yield func(int) bool) {
		for k := range f.Scale {
			n, _ := strconv.Atoi(k)
			if !yield(n) {
				return
			}
		}
	}) {
		k := strconv.Itoa(n)
		fs, bs := f.Scale[k], b.Scale[k]
		if bs == nil {
			bs = &ScaleFigures{}
		}
		row(fmt.Sprintf("W=%d: end to end (tasks/s)", n), fs.E2EPerSec, bs.E2EPerSec, 0)
		row(fmt.Sprintf("W=%d: pool start-up (ms)", n), fs.PoolStartupMs, bs.PoolStartupMs, 1)
		row(fmt.Sprintf("W=%d: worker RSS, idle (MiB)", n), fs.WorkerRSSMB, bs.WorkerRSSMB, 1)
		if fs.BrokerRSSMB > 0 {
			row(fmt.Sprintf("W=%d: broker RSS (MiB)", n), fs.BrokerRSSMB, bs.BrokerRSSMB, 1)
		}
	}
	queuesRows(f.Queues, b.Queues, row)
	r.growthRows(row)
	return out
}

func num(x float64, digits int) string { return strconv.FormatFloat(x, 'f', digits, 64) }
