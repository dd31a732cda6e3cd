package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches url and parses it as the Prometheus text format.
func scrape(t *testing.T, url string) (map[string]*dto.MetricFamily, error) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// value returns the value of family's metric whose labels include want.
func value(fams map[string]*dto.MetricFamily, family string, want map[string]string) float64 {
	f := fams[family]
	if f == nil {
		return -1
	}
	total := 0.0
	found := false
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	if !found {
		return -1
	}
	return total
}

func status(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body) // only the status matters
	resp.Body.Close()
	return resp.StatusCode
}

// /metrics parses as Prometheus text and its counters match the work
// done; /healthz, /readyz and forq health report a stopped broker.
func TestMetricsAndHealth(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	port := freePort(t)
	w := start(t, "forq", env, "--log-format", "json", "work", "--metrics-port", strconv.Itoa(port), "--retry-base", "10ms", "--concurrency", "4")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 20*time.Second, func() bool { return status(base+"/readyz") == 200 }, "worker never ready")
	enqueueLines(t, env, "echo", 50, strconv.Itoa)
	enqueueLines(t, env, "nope", 3, strconv.Itoa, "--max-attempts", "2")
	var fams map[string]*dto.MetricFamily
	eventually(t, 30*time.Second, func() bool {
		var err error
		fams, err = scrape(t, base+"/metrics")
		return err == nil && value(fams, "forq_tasks_processed_total", nil) == 50 && value(fams, "forq_tasks_dead_total", nil) == 3
	}, "metrics never showed the work done")
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"forq_tasks_processed_total", map[string]string{"queue": "default", "type": "echo"}, 50},
		// A type the worker does not handle is labelled "other".
		{"forq_tasks_failed_total", map[string]string{"queue": "default", "type": "other"}, 6},
		{"forq_tasks_retried_total", map[string]string{"queue": "default", "type": "other"}, 3},
		{"forq_tasks_dead_total", map[string]string{"queue": "default", "type": "other"}, 3},
		{"forq_task_duration_seconds", map[string]string{"type": "echo"}, 50},
		{"forq_tasks_in_flight", nil, 0},
		{"forq_queue_depth", nil, -1}, // the broker reports the queues now
	} {
		if got := value(fams, c.family, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	// Every task line of the JSON log carries the task's identity.
	var checked int
	for _, l := range strings.Split(w.stderr(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil || rec["task"] == nil {
			continue
		}
		checked++
		for _, k := range []string{"task", "queue", "type", "attempt", "pid"} {
			if rec[k] == nil {
				t.Errorf("log line %s lacks %q", l, k)
			}
		}
	}
	if checked < 6 {
		t.Errorf("%d JSON task log lines, want the 6 failures at least", checked)
	}

	if code, out, _ := run(t, nil, env, "health"); code != 0 || !strings.Contains(out, "healthy: broker at "+b.url) {
		t.Errorf("forq health with the broker up: exit %d, %q", code, out)
	}
	if code, out, _ := run(t, nil, env, "health", "--http", base+"/healthz"); code != 0 || !strings.HasPrefix(out, "healthy") {
		t.Errorf("forq health --http /healthz: exit %d, %q", code, out)
	}
	b.signal(syscall.SIGTERM)
	b.wait(20 * time.Second)
	if code, _, errs := run(t, nil, env, "health", "--connect-timeout", "500ms"); code != 1 || !strings.Contains(errs, "unhealthy") {
		t.Errorf("forq health with the broker stopped: exit %d, %q; want 1, unhealthy", code, errs)
	}
	eventually(t, 10*time.Second, func() bool { return status(base+"/readyz") == 503 }, "worker /readyz still OK with the broker stopped")
	if code, _, errs := run(t, nil, env, "health", "--http", base+"/readyz"); code != 1 || !strings.Contains(errs, "not connected to the broker") {
		t.Errorf("forq health --http /readyz with the broker stopped: exit %d, %q", code, errs)
	}
}

// The pool serves its own metrics, and each child serves its own on the
// next ports. The pool is ready while its workers are and it has the
// broker.
func TestPoolMetrics(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	// The pool on port, its children on the next two.
	port := freePorts(t, 3)
	start(t, "forq", env, "pool", "-n", "2", "--metrics-port", strconv.Itoa(port))
	pool := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 20*time.Second, func() bool { return status(pool+"/readyz") == 200 }, "pool never ready")
	fams, err := scrape(t, pool+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if got := value(fams, "forq_pool_children", nil); got != 2 {
		t.Errorf("forq_pool_children = %v, want 2", got)
	}
	if got := value(fams, "forq_pool_child_restarts_total", nil); got != 0 {
		t.Errorf("forq_pool_child_restarts_total = %v, want 0", got)
	}
	enqueueLines(t, env, "echo", 20, strconv.Itoa)
	eventually(t, 20*time.Second, func() bool {
		total := 0.0
		for i := range 2 {
			fams, err := scrape(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port+1+i))
			if err != nil {
				return false
			}
			total += max(value(fams, "forq_tasks_processed_total", nil), 0)
		}
		return total == 20
	}, "the children's metrics never added up to the 20 tasks")
	// The two children share the CPUs.
	want := float64(max(1, runtime.GOMAXPROCS(0)/2))
	for i := range 2 {
		fams, err := scrape(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port+1+i))
		if err != nil {
			t.Fatal(err)
		}
		if got := value(fams, "go_sched_gomaxprocs_threads", nil); got != want {
			t.Errorf("child %d: GOMAXPROCS %v, want %v (the CPUs shared by 2 children)", i, got, want)
		}
	}
	// Its workers run on, but a pool whose broker is gone is not ready:
	// what the docker-compose healthcheck of the workers tells.
	if code, out, errs := run(t, nil, env, "health", "--http", pool+"/readyz"); code != 0 {
		t.Errorf("forq health --http pool /readyz: exit %d, %q %q", code, out, errs)
	}
	b.signal(syscall.SIGTERM)
	b.wait(20 * time.Second)
	eventually(t, 10*time.Second, func() bool { return status(pool+"/readyz") == 503 }, "pool /readyz still OK with the broker stopped")
	if code, _, errs := run(t, nil, env, "health", "--http", pool+"/readyz"); code != 1 || !strings.Contains(errs, "not connected to the broker") {
		t.Errorf("forq health --http pool /readyz with the broker stopped: exit %d, %q; want 1, not connected to the broker", code, errs)
	}
}

// forq stats --json agrees with the broker while 4 worker processes drain
// 10,000 tasks: queued falls, processed rises, the workers are listed.
func TestStatsWhileDraining(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	enqueueLines(t, env, "sleep", 10000, func(int) string { return "1ms" })
	stats := func() Stats {
		t.Helper()
		code, out, errs := run(t, nil, env, "stats", "--json")
		if code != 0 {
			t.Fatalf("forq stats: exit %d: %s", code, errs)
		}
		var st Stats
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("forq stats --json: %v: %q", err, out)
		}
		return st
	}
	js := b.js(t)
	st := stats()
	if len(st.Queues) != 1 || st.Queues[0].Queued != 10000 || st.Queues[0].Running != 0 {
		// no consumer yet: its tasks count all the same
		t.Errorf("queues before any worker: %+v; want default with 10000 queued", st.Queues)
	}
	p := start(t, "forq", env, "pool", "-n", "4")
	eventually(t, 20*time.Second, func() bool { return len(stats().Workers) == 4 }, "stats never listed 4 workers")
	kids := childPIDs(p.cmd.Process.Pid)
	st = stats()
	for _, wk := range st.Workers {
		if !contains(kids, wk.PID) {
			t.Errorf("stats lists worker pid %d, not one of the pool's children %v", wk.PID, kids)
		}
	}
	lastQueued, lastDone := uint64(1<<63), int64(-1)
	for {
		st = stats()
		if len(st.Queues) != 1 || st.Queues[0].Queue != "default" {
			t.Fatalf("queues %+v, want default", st.Queues)
		}
		q := st.Queues[0]
		if q.Queued > lastQueued {
			t.Errorf("queued rose from %d to %d while draining", lastQueued, q.Queued)
		}
		if q.Processed1m < lastDone {
			t.Errorf("processed in the last minute fell from %d to %d", lastDone, q.Processed1m)
		}
		lastQueued, lastDone = q.Queued, q.Processed1m
		if q.Queued == 0 && q.Running == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	eventually(t, 10*time.Second, func() bool { return stats().Queues[0].Processed1m == 10000 }, "processed in the last minute never reached 10000: %+v", stats().Queues)
	c, err := js.Consumer(t.Context(), "FORQ_TASKS", "default")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if q := stats().Queues[0]; q.Queued != ci.NumPending || uint64(q.Unacked) != uint64(ci.NumAckPending) || q.Running > q.Unacked {
		t.Errorf("stats queued %d unacked %d running %d, broker pending %d ack pending %d", q.Queued, q.Unacked, q.Running, ci.NumPending, ci.NumAckPending)
	}
	code, out, _ := run(t, nil, env, "stats")
	if code != 0 || !strings.Contains(out, "QUEUE") || !strings.Contains(out, "default") || !strings.Contains(out, "WORKER PID") {
		t.Errorf("forq stats (table): exit %d, %q", code, out)
	}
}

// Stats mirrors the JSON of "forq stats --json".
type Stats struct {
	Queues []struct {
		Queue       string `json:"queue"`
		Queued      uint64 `json:"queued"`
		Running     int    `json:"running"`
		Unacked     int    `json:"unacked"`
		Dead        uint64 `json:"dead"`
		Paused      bool   `json:"paused"`
		Processed1m int64  `json:"processed_last_minute"`
		Failed1m    int64  `json:"failed_last_minute"`
	} `json:"queues"`
	Workers []struct {
		PID      int   `json:"pid"`
		InFlight int64 `json:"in_flight"`
	} `json:"workers"`
}

// A broker with a token starts, declares forq's streams and serves its
// health endpoints; clients need the token.
func TestBrokerWithToken(t *testing.T) {
	port, mport := freePort(t), freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p := start(t, "forq", []string{"FORQ_TOKEN=s3cret"}, "broker", "--data-dir", t.TempDir(), "--port", strconv.Itoa(port), "--metrics-port", strconv.Itoa(mport))
	base := fmt.Sprintf("http://127.0.0.1:%d", mport)
	eventually(t, 20*time.Second, func() bool { return status(base+"/readyz") == 200 }, "broker /readyz never OK; stderr %s", p.stderr())
	if status(base+"/healthz") != 200 {
		t.Errorf("broker /healthz not OK")
	}
	if code, out, errs := run(t, nil, []string{"FORQ_URL=" + url, "FORQ_TOKEN=s3cret"}, "enqueue", "echo", "--payload", "x"); code != 0 || strings.TrimSpace(out) == "" {
		t.Errorf("enqueue with the token: exit %d, %q %q", code, out, errs)
	}
	if code, _, errs := run(t, nil, []string{"FORQ_URL=" + url}, "enqueue", "echo", "--payload", "x"); code != 1 || !strings.Contains(errs, "refused our credentials") {
		t.Errorf("enqueue without the token: exit %d, %q; want 1 naming the credentials", code, errs)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("broker exit %d after SIGTERM; stderr %s", code, p.stderr())
	}
}

// forq stats splits a queue's backlog by priority and counts its delayed
// tasks.
func TestStatsByPriorityAndScheduled(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	// Pausing declares the queue's consumers, one per level.
	if code, _, errs := run(t, nil, env, "pause", "sq"); code != 0 {
		t.Fatalf("pause: exit %d: %s", code, errs)
	}
	for prio, n := range map[string]int{"high": 3, "normal": 1, "low": 2} {
		for range n {
			if code, _, errs := run(t, nil, env, "enqueue", "echo", "--queue", "sq", "--priority", prio); code != 0 {
				t.Fatalf("enqueue --priority %s: exit %d: %s", prio, code, errs)
			}
		}
	}
	if code, _, errs := run(t, nil, env, "enqueue", "echo", "--queue", "sq", "--in", "1h"); code != 0 {
		t.Fatalf("enqueue --in 1h: exit %d: %s", code, errs)
	}
	code, out, errs := run(t, nil, env, "stats", "--json", "--queue", "sq")
	if code != 0 {
		t.Fatalf("stats: exit %d: %s", code, errs)
	}
	var st struct {
		Queues []struct {
			Queue     string            `json:"queue"`
			Queued    uint64            `json:"queued"`
			ByPrio    map[string]uint64 `json:"queued_by_priority"`
			Scheduled uint64            `json:"scheduled"`
			Paused    bool              `json:"paused"`
		} `json:"queues"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Queues) != 1 {
		t.Fatalf("stats --json %q: %v", out, err)
	}
	q := st.Queues[0]
	if q.Queued != 6 || q.ByPrio["high"] != 3 || q.ByPrio["normal"] != 1 || q.ByPrio["low"] != 2 || q.Scheduled != 1 || !q.Paused {
		t.Errorf("got %+v, want 6 queued (3 high, 1 normal, 2 low), 1 scheduled, paused", q)
	}
	code, out, _ = run(t, nil, env, "stats", "--queue", "sq")
	if code != 0 || !strings.Contains(out, "6 (3/1/2)") {
		t.Errorf("stats table: exit %d, %q; want 6 (3/1/2)", code, out)
	}
}

// A worker sets GOGC for its heap floor, which /metrics shows; --heap-floor
// 0 and a GOGC of the user's own leave Go's default.
func TestWorkerHeapFloor(t *testing.T) {
	b := startBroker(t, "", 0)
	// A floor F asks for GOGC = F / 4 MiB * 100 (Go's minimum heap goal
	// scales with GOGC), or less if the live heap, times 1 + GOGC/100,
	// already reaches F: so more than 100, and at most that.
	for _, c := range []struct {
		name     string
		env      []string
		args     []string
		min, max float64
	}{
		{"default floor", nil, nil, 101, 400},
		{"floor given", nil, []string{"--heap-floor", "32MiB"}, 401, 800},
		{"floor off", nil, []string{"--heap-floor", "0"}, 100, 100},
		{"user's GOGC", []string{"GOGC=150"}, nil, 150, 150},
	} {
		t.Run(c.name, func(t *testing.T) {
			port := freePort(t)
			env := append([]string{"FORQ_URL=" + b.url}, c.env...)
			w := start(t, "forq", env, append([]string{"work", "--metrics-port", strconv.Itoa(port)}, c.args...)...)
			base := fmt.Sprintf("http://127.0.0.1:%d", port)
			eventually(t, 20*time.Second, func() bool { return status(base+"/readyz") == 200 }, "worker never ready")
			fams, err := scrape(t, base+"/metrics")
			if err != nil {
				t.Fatal(err)
			}
			if got := value(fams, "go_gc_gogc_percent", nil); got < c.min || got > c.max {
				t.Errorf("go_gc_gogc_percent %v, want %v to %v", got, c.min, c.max)
			}
			w.signal(syscall.SIGTERM)
			if code := w.wait(20 * time.Second); code != 0 {
				t.Errorf("worker exit code %d after SIGTERM; stderr %s", code, w.stderr())
			}
		})
	}
}
