package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// How forq's cost grows with the work: a deep backlog, large payloads, a
// load at fractions of the measured capacity. Each is measured after a
// mode's main figures, on a fresh queue and pool of the same mode.

// GrowthOptions choose the growth measurements of a run; the zero value
// measures none.
type GrowthOptions struct {
	// Backlog is the number of tasks queued before a drain is timed; 0
	// skips it.
	Backlog int
	// Payloads lists payload sizes in bytes whose batch enqueue, drain and
	// end-to-end throughput are measured; each runs PayloadTasks(size)
	// tasks.
	Payloads []int
	// LoadFractions lists fractions of forq's end-to-end throughput at
	// which latency is measured, for forq and the baseline alike.
	LoadFractions []float64
}

// Growth are the growth figures of one mode, and the broker's memory in
// the main measurement. The broker's memory is this process's (VmRSS and
// VmHWM of /proc/self/status), known only when the broker is embedded.
type Growth struct {
	// BrokerRSSMB is the broker's resident memory after the main end-to-end
	// measurement; BrokerPeakRSSMB its peak over the mode's main
	// measurements.
	BrokerRSSMB     float64 `json:"broker_rss_mb,omitempty"`
	BrokerPeakRSSMB float64 `json:"broker_peak_rss_mb,omitempty"`
	// Backlog are the figures of the drain of a deep queue.
	Backlog *BacklogFigures `json:"backlog,omitempty"`
	// Payloads maps a payload size in bytes to its figures.
	Payloads map[string]*PayloadFigures `json:"payloads,omitempty"`
	// LoadFractions maps a fraction of the capacity ("0.25") to the
	// latency at that load.
	LoadFractions map[string]*LoadFigures `json:"load_fractions,omitempty"`
}

// BacklogFigures are the measurements of a drain of GrowthOptions.Backlog
// tasks.
type BacklogFigures struct {
	// FillPerSec is the batch enqueue into the paused queue, in batches
	// of FillChunk.
	FillPerSec float64 `json:"fill_per_sec"`
	// DrainPerSec is tasks ÷ time from un-pausing to all acked.
	DrainPerSec float64 `json:"drain_per_sec"`
	// DrainVsTasks is DrainPerSec ÷ the mode's drain_per_sec (a queue of
	// --tasks): how the drain slows down with the backlog.
	DrainVsTasks            float64 `json:"drain_vs_tasks"`
	DrainBrokerCPUUsPerTask float64 `json:"drain_broker_cpu_us_per_task,omitempty"`
	DrainWorkerCPUUsPerTask float64 `json:"drain_worker_cpu_us_per_task"`
	// The broker's resident memory before the fill, with the queue full,
	// and after the drain, each read after a forced collection that
	// returns freed memory to the OS (what the broker holds, not what Go
	// keeps of its garbage); its peak, garbage included, from the fill to
	// the end of the drain.
	BrokerRSSBeforeMB  float64 `json:"broker_rss_before_mb,omitempty"`
	BrokerRSSFullMB    float64 `json:"broker_rss_full_mb,omitempty"`
	BrokerRSSDrainedMB float64 `json:"broker_rss_drained_mb,omitempty"`
	BrokerPeakRSSMB    float64 `json:"broker_peak_rss_mb,omitempty"`
}

// PayloadFigures are the throughputs at one payload size.
type PayloadFigures struct {
	EnqueueBatchPerSec   float64 `json:"enqueue_batch_per_sec"`
	EnqueueBatchMBPerSec float64 `json:"enqueue_batch_mb_per_sec"`
	DrainPerSec          float64 `json:"drain_per_sec"`
	E2EPerSec            float64 `json:"e2e_per_sec"`
	E2EMBPerSec          float64 `json:"e2e_mb_per_sec"`
}

// LoadFigures are the latencies, enqueue to handler start, at one load.
type LoadFigures struct {
	// RatePerSec is the rate asked for; ReachedPerSec the producer's.
	RatePerSec    float64 `json:"rate_per_sec"`
	ReachedPerSec float64 `json:"reached_per_sec"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
}

// GrowthSettings are what the growth measurements were asked to do.
type GrowthSettings struct {
	Backlog       int       `json:"backlog,omitempty"`
	Payloads      []int     `json:"payloads,omitempty"`
	LoadFractions []float64 `json:"load_fractions,omitempty"`
	// PayloadTasks maps a payload size to the tasks each of its
	// measurements ran.
	PayloadTasks map[string]int `json:"payload_tasks,omitempty"`
}

// PayloadBudget bounds the bytes of payload one payload-size measurement
// moves: PayloadTasks runs fewer tasks of large payloads.
const PayloadBudget = 128 << 20

// PayloadTasks is the number of tasks each measurement of payloads of
// size bytes runs: tasks, or fewer when their payloads would exceed
// PayloadBudget, but at least 100.
func PayloadTasks(tasks, size int) int {
	return min(tasks, max(100, PayloadBudget/max(size, MinPayload)))
}

// loadTasks is the number of probes sent at rate per second: two
// seconds' worth, at least 200 and at most tasks.
func loadTasks(tasks int, rate float64) int {
	return max(200, min(tasks, int(rate*2)))
}

func (g GrowthOptions) any() bool {
	return g.Backlog > 0 || len(g.Payloads) > 0 || len(g.LoadFractions) > 0
}

func (r *runner) growthSettings() GrowthSettings {
	g := r.o.Growth
	s := GrowthSettings{Backlog: g.Backlog, Payloads: g.Payloads, LoadFractions: g.LoadFractions}
	for _, size := range g.Payloads {
		if s.PayloadTasks == nil {
			s.PayloadTasks = map[string]int{}
		}
		s.PayloadTasks[strconv.Itoa(size)] = PayloadTasks(r.o.Tasks, size)
	}
	return s
}

// growth measures the growth figures of mode into f, whose main figures
// are measured; capacity is the end-to-end throughput the load fractions
// are of.
func (r *runner) growth(ctx context.Context, mode string, f *Figures, capacity float64) error {
	g := r.o.Growth
	if !g.any() {
		return nil
	}
	c, err := r.setup(ctx, mode)
	if err != nil {
		return err
	}
	defer r.teardown(mode)
	p, err := r.startPool(ctx, mode, c, r.o.Workers)
	if err != nil {
		return err
	}
	defer p.stop()
	for _, fr := range g.LoadFractions {
		lf, err := r.loadAt(ctx, mode, c, fr*capacity)
		if err != nil {
			return fmt.Errorf("load at %g of %.0f tasks/s: %w", fr, capacity, err)
		}
		if f.LoadFractions == nil {
			f.LoadFractions = map[string]*LoadFigures{}
		}
		f.LoadFractions[fracKey(fr)] = lf
	}
	for _, size := range g.Payloads {
		pf, err := r.payload(ctx, mode, c, size)
		if err != nil {
			return fmt.Errorf("payloads of %d bytes: %w", size, err)
		}
		if f.Payloads == nil {
			f.Payloads = map[string]*PayloadFigures{}
		}
		f.Payloads[strconv.Itoa(size)] = pf
	}
	if g.Backlog > 0 {
		if f.Backlog, err = r.backlog(ctx, mode, c, p, f.DrainPerSec); err != nil {
			return fmt.Errorf("backlog of %d: %w", g.Backlog, err)
		}
	}
	return nil
}

func fracKey(fr float64) string { return strconv.FormatFloat(fr, 'f', -1, 64) }

func (r *runner) loadAt(ctx context.Context, mode string, c jetstream.Consumer, rate float64) (*LoadFigures, error) {
	r.o.Log.Info("bench: load", "mode", mode, "rate", int(rate))
	res, err := r.growthProducer(ctx, mode, PhaseLoad, r.o.Tasks, r.o.PayloadSize, loadTasks(r.o.Tasks, rate), rate)
	if err != nil {
		return nil, err
	}
	if err := r.drained(ctx, c, res.LastSeq); err != nil {
		return nil, err
	}
	return &LoadFigures{RatePerSec: round(rate, 0), ReachedPerSec: res.LoadPerSec,
		P50Ms: pct(res.LoadNs, 50), P99Ms: pct(res.LoadNs, 99)}, nil
}

// payload measures a batch enqueue into the paused queue, its drain, and
// end to end, with payloads of size bytes.
func (r *runner) payload(ctx context.Context, mode string, c jetstream.Consumer, size int) (*PayloadFigures, error) {
	n := PayloadTasks(r.o.Tasks, size)
	r.o.Log.Info("bench: payload", "mode", mode, "size", size, "tasks", n)
	mb := float64(size) / (1 << 20)
	if err := r.pause(ctx, mode, time.Now().Add(time.Hour)); err != nil {
		return nil, err
	}
	res, err := r.growthProducer(ctx, mode, PhaseFill, n, size, 0, 0)
	if err != nil {
		return nil, err
	}
	pf := &PayloadFigures{EnqueueBatchPerSec: res.BatchPerSec, EnqueueBatchMBPerSec: res.BatchPerSec * mb}
	t0 := time.Now().Add(20 * time.Millisecond)
	if err := r.pause(ctx, mode, t0); err != nil {
		return nil, err
	}
	if err := r.drained(ctx, c, res.LastSeq); err != nil {
		return nil, err
	}
	pf.DrainPerSec = float64(n) / time.Since(t0).Seconds()
	if res, err = r.growthProducer(ctx, mode, PhaseE2E, n, size, 0, 0); err != nil {
		return nil, err
	}
	if err := r.drained(ctx, c, res.LastSeq); err != nil {
		return nil, err
	}
	pf.E2EPerSec = float64(n) / time.Since(time.Unix(0, res.StartNs)).Seconds()
	pf.E2EMBPerSec = pf.E2EPerSec * mb
	return pf, nil
}

// backlog fills the paused queue with the backlog, then drains it, and
// reads the broker's memory on the way; drain is the mode's drain of
// --tasks, for the ratio.
func (r *runner) backlog(ctx context.Context, mode string, c jetstream.Consumer, p *workerPool, drain float64) (*BacklogFigures, error) {
	n := r.o.Growth.Backlog
	bf := &BacklogFigures{}
	if err := r.pause(ctx, mode, time.Now().Add(time.Hour)); err != nil {
		return nil, err
	}
	if r.o.EmbeddedBroker {
		debug.FreeOSMemory()
		bf.BrokerRSSBeforeMB, _ = selfRSS()
		resetPeakRSS()
	}
	r.o.Log.Info("bench: filling the backlog", "mode", mode, "tasks", n)
	res, err := r.growthProducer(ctx, mode, PhaseFill, n, r.o.PayloadSize, 0, 0)
	if err != nil {
		return nil, err
	}
	bf.FillPerSec = res.BatchPerSec
	if r.o.EmbeddedBroker {
		_, bf.BrokerPeakRSSMB = selfRSS()
		debug.FreeOSMemory()
		bf.BrokerRSSFullMB, _ = selfRSS()
	}
	r.o.Log.Info("bench: draining the backlog", "mode", mode, "tasks", n)
	broker0, _ := cpuTimes()
	workers0 := p.cpu()
	t0 := time.Now().Add(20 * time.Millisecond)
	if err := r.pause(ctx, mode, t0); err != nil {
		return nil, err
	}
	if err := r.drained(ctx, c, res.LastSeq); err != nil {
		return nil, err
	}
	bf.DrainPerSec = float64(n) / time.Since(t0).Seconds()
	broker1, _ := cpuTimes()
	bf.DrainWorkerCPUUsPerTask = round(float64(p.cpu()-workers0)/1e3/float64(n), 2)
	if drain > 0 {
		bf.DrainVsTasks = round(bf.DrainPerSec/drain, 3)
	}
	if r.o.EmbeddedBroker {
		bf.DrainBrokerCPUUsPerTask = round(float64(broker1-broker0)/1e3/float64(n), 2)
		_, peak := selfRSS()
		bf.BrokerPeakRSSMB = max(bf.BrokerPeakRSSMB, peak)
		debug.FreeOSMemory()
		bf.BrokerRSSDrainedMB, _ = selfRSS()
	}
	return bf, nil
}

// forgetIDs deletes the embedded broker's FORQ_TASKS stream, which the
// next forq measurement declares again: a purge leaves the stream's
// de-duplication state (every Nats-Msg-Id of its duplicate window, 2
// minutes, about 180 bytes each), which would count in the broker memory
// of whatever is measured next. A broker of the user's (--url) keeps its
// stream.
func (r *runner) forgetIDs(ctx context.Context) {
	if r.o.EmbeddedBroker {
		_ = r.js.DeleteStream(ctx, forq.StreamTasks)
	}
}

// pause pauses the mode's consumer until until. A resume does not wake
// the broker's delivery loop, the end of a pause does: to start a drain,
// pause until a moment just ahead.
func (r *runner) pause(ctx context.Context, mode string, until time.Time) error {
	stream, cons := r.names(mode)
	if _, err := r.js.PauseConsumer(ctx, stream, cons, until); err != nil {
		return fmt.Errorf("pause consumer: %w", err)
	}
	return nil
}

// growthProducer runs a producer process of tasks of size bytes for
// phase; probes and rate are PhaseLoad's.
func (r *runner) growthProducer(ctx context.Context, mode, phase string, tasks, size, probes int, rate float64) (*ProducerResult, error) {
	args := append(slices.Clone(r.o.Command), "bench-producer", "--mode", mode, "--phase", phase,
		"--url", r.o.URL, "--tasks", strconv.Itoa(tasks), "--payload-size", strconv.Itoa(size),
		"--load-tasks", strconv.Itoa(probes), "--rate", strconv.FormatFloat(max(rate, 1), 'f', -1, 64))
	if r.o.BaselineHeaders {
		args = append(args, "--headers")
	}
	if r.o.ProfileDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(r.o.ProfileDir, fmt.Sprintf("producer-%s-%s-%d.pprof", mode, phase, size)))
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, r.o.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("producer (%s): %w", phase, err)
	}
	var res ProducerResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("producer (%s) output %q: %w", phase, out.String(), err)
	}
	return &res, nil
}

// selfRSS returns this process's resident memory and its peak (VmRSS and
// VmHWM of /proc/self/status), in MiB; 0 where /proc does not tell.
func selfRSS() (rss, peak float64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "VmRSS" && k != "VmHWM" {
			continue
		}
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if k == "VmRSS" {
			rss = round(kb/1024, 1)
		} else {
			peak = round(kb/1024, 1)
		}
	}
	return rss, peak
}

// freshRSS returns the memory Go holds free to the OS and resets the
// peak: a mode's broker memory starts from what the broker holds, not
// from what the previous mode left.
func freshRSS() {
	debug.FreeOSMemory()
	resetPeakRSS()
}

// resetPeakRSS sets this process's VmHWM to its VmRSS (Linux 4.0+), so
// that the next peak read is that of what follows; where it cannot, the
// peak stays the process's.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// bestGrowth keeps in a the best of a's and b's growth figures: the
// higher throughput, the lower CPU and memory; of the load figures, each
// fraction's of the round that reached the higher rate.
func bestGrowth(a, b *Growth) {
	hi := func(x *float64, y float64) { *x = max(*x, y) }
	lo := func(x *float64, y float64) {
		if *x == 0 || y != 0 && y < *x {
			*x = y
		}
	}
	lo(&a.BrokerRSSMB, b.BrokerRSSMB)
	lo(&a.BrokerPeakRSSMB, b.BrokerPeakRSSMB)
	switch {
	case a.Backlog == nil:
		a.Backlog = b.Backlog
	case b.Backlog != nil:
		x, y := a.Backlog, b.Backlog
		hi(&x.FillPerSec, y.FillPerSec)
		hi(&x.DrainPerSec, y.DrainPerSec)
		hi(&x.DrainVsTasks, y.DrainVsTasks)
		lo(&x.DrainBrokerCPUUsPerTask, y.DrainBrokerCPUUsPerTask)
		lo(&x.DrainWorkerCPUUsPerTask, y.DrainWorkerCPUUsPerTask)
		lo(&x.BrokerRSSBeforeMB, y.BrokerRSSBeforeMB)
		lo(&x.BrokerRSSFullMB, y.BrokerRSSFullMB)
		lo(&x.BrokerRSSDrainedMB, y.BrokerRSSDrainedMB)
		lo(&x.BrokerPeakRSSMB, y.BrokerPeakRSSMB)
	}
	for k, y := range b.Payloads {
		x := a.Payloads[k]
		if x == nil {
			if a.Payloads == nil {
				a.Payloads = map[string]*PayloadFigures{}
			}
			a.Payloads[k] = y
			continue
		}
		hi(&x.EnqueueBatchPerSec, y.EnqueueBatchPerSec)
		hi(&x.EnqueueBatchMBPerSec, y.EnqueueBatchMBPerSec)
		hi(&x.DrainPerSec, y.DrainPerSec)
		hi(&x.E2EPerSec, y.E2EPerSec)
		hi(&x.E2EMBPerSec, y.E2EMBPerSec)
	}
	for k, y := range b.LoadFractions {
		if x := a.LoadFractions[k]; x == nil || y.ReachedPerSec > x.ReachedPerSec {
			if a.LoadFractions == nil {
				a.LoadFractions = map[string]*LoadFigures{}
			}
			a.LoadFractions[k] = y
		}
	}
}

// growthSettingsLines say what the growth measurements did that their
// rows cannot.
func (r *Report) growthSettingsLines() (l []string) {
	s := r.Settings
	if s.Backlog > 0 {
		l = append(l, fmt.Sprintf("backlog: %d tasks enqueued into the paused queue in batches of %d, then drained by the %d workers",
			s.Backlog, FillChunk, s.Workers))
	}
	if len(s.Payloads) > 0 {
		l = append(l, fmt.Sprintf("payload sizes: %d tasks each; \"×N\" in a row: N tasks, as %d would move more than %d MiB",
			s.Tasks, s.Tasks, PayloadBudget>>20))
	}
	if len(s.LoadFractions) > 0 {
		l = append(l, "load fractions: of forq's end-to-end throughput in the same round, for both modes (the same offered load), "+
			"sent in batches of the tasks due at each moment")
	}
	return l
}

// growthRows writes the growth figures' rows with row.
func (r *Report) growthRows(row func(name string, f, b float64, digits int)) {
	f, b := &r.Growth, &Growth{}
	if r.Baseline != nil {
		b = &r.Baseline.Growth
	}
	for _, k := range sortedKeys(f.LoadFractions) {
		x, y := f.LoadFractions[k], b.LoadFractions[k]
		if y == nil {
			y = &LoadFigures{}
		}
		fr, _ := strconv.ParseFloat(k, 64)
		name := fmt.Sprintf("load %g%% (%.0f/s)", fr*100, x.RatePerSec)
		row(name+", p50 (ms)", x.P50Ms, y.P50Ms, 3)
		row(name+", p99 (ms)", x.P99Ms, y.P99Ms, 3)
		row("  load reached (tasks/s)", x.ReachedPerSec, y.ReachedPerSec, 0)
	}
	for _, k := range sortedKeys(f.Payloads) {
		x, y := f.Payloads[k], b.Payloads[k]
		if y == nil {
			y = &PayloadFigures{}
		}
		size, _ := strconv.Atoi(k)
		name := sizeName(size)
		if n := r.Settings.PayloadTasks[k]; n != r.Settings.Tasks {
			name += fmt.Sprintf(" ×%d", n) // fewer tasks: said in the row
		}
		row(name+": enq. batch (tasks/s)", x.EnqueueBatchPerSec, y.EnqueueBatchPerSec, 0)
		row(name+": enq. batch (MB/s)", x.EnqueueBatchMBPerSec, y.EnqueueBatchMBPerSec, 1)
		row(name+": drain (tasks/s)", x.DrainPerSec, y.DrainPerSec, 0)
		row(name+": end to end (tasks/s)", x.E2EPerSec, y.E2EPerSec, 0)
		row(name+": end to end (MB/s)", x.E2EMBPerSec, y.E2EMBPerSec, 1)
	}
	if x := f.Backlog; x != nil {
		y := b.Backlog
		if y == nil {
			y = &BacklogFigures{}
		}
		name := fmt.Sprintf("backlog %d", r.Settings.Backlog)
		row(name+": fill (tasks/s)", x.FillPerSec, y.FillPerSec, 0)
		row(name+": drain (tasks/s)", x.DrainPerSec, y.DrainPerSec, 0)
		row("  ÷ drain of --tasks", x.DrainVsTasks, y.DrainVsTasks, 2)
		if x.DrainBrokerCPUUsPerTask > 0 {
			row("  in the drain, broker (µs)", x.DrainBrokerCPUUsPerTask, y.DrainBrokerCPUUsPerTask, 1)
		}
		row("  in the drain, workers (µs)", x.DrainWorkerCPUUsPerTask, y.DrainWorkerCPUUsPerTask, 1)
		if x.BrokerRSSBeforeMB > 0 {
			row("  broker RSS, before the fill (MiB)", x.BrokerRSSBeforeMB, y.BrokerRSSBeforeMB, 1)
			row("  broker RSS, full (MiB)", x.BrokerRSSFullMB, y.BrokerRSSFullMB, 1)
			row("  broker RSS, drained (MiB)", x.BrokerRSSDrainedMB, y.BrokerRSSDrainedMB, 1)
			row("  broker RSS, peak (MiB)", x.BrokerPeakRSSMB, y.BrokerPeakRSSMB, 1)
		}
	}
}

// sortedKeys returns m's keys, numbers, in increasing order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	val := func(k string) float64 { v, _ := strconv.ParseFloat(k, 64); return v }
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(val(a), val(b)) })
	return keys
}

// sizeName is a payload size as the table names it: 64 B, 4 KiB, 256 KiB.
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
