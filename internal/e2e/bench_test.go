package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// "forq bench" runs end to end with a small N and reports, as JSON, every
// documented figure for forq, the baseline and their ratio, and draws them
// (--html, --svg-dir, and again with --from). No speed is asserted: only
// that each figure was measured.
func TestBenchReportsEveryFigure(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := run(t, nil, nil, "bench", "--tasks", "1000", "--workers", "2", "--samples", "20",
		"--rate", "500", "--scale", "1,2", "--baseline", "--json",
		"--html", filepath.Join(dir, "r.html"), "--svg-dir", filepath.Join(dir, "svg"))
	if code != 0 {
		t.Fatalf("forq bench exit code %d, want 0; stderr:\n%s", code, tail(errOut, 3000))
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	checkBenchFigures(t, "forq", rep)
	for _, obj := range []string{"baseline", "ratio"} {
		m, ok := rep[obj].(map[string]any)
		if !ok {
			t.Fatalf("%s = %v, want an object", obj, rep[obj])
		}
		checkBenchFigures(t, obj, m)
	}
	if s, ok := rep["settings"].(map[string]any); !ok || s["workers"] != 2.0 || s["tasks"] != 1000.0 {
		t.Errorf("settings = %v, want workers 2 and tasks 1000", rep["settings"])
	}

	// The page and the charts, and the same drawn again from the JSON.
	page, err := os.ReadFile(filepath.Join(dir, "r.html"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg "); n != 4 {
		t.Errorf("the HTML report has %d charts, want 4", n)
	}
	for _, f := range []string{"throughput", "scale", "latency", "latency-tail"} {
		if _, err := os.Stat(filepath.Join(dir, "svg", f+".svg")); err != nil {
			t.Errorf("--svg-dir: %v", err)
		}
	}
	saved := filepath.Join(dir, "r.json")
	if err := os.WriteFile(saved, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(dir, "again.html")
	if code, _, errOut := run(t, nil, nil, "bench", "--from", saved, "--html", again); code != 0 {
		t.Fatalf("forq bench --from: exit %d, want 0; stderr:\n%s", code, errOut)
	}
	if b, err := os.ReadFile(again); err != nil || string(b) != string(page) {
		t.Errorf("--from: the page drawn again from the JSON differs (err %v)", err)
	}
}

// The figures every report has, for forq, the baseline and their ratio.
var (
	benchKeys = []string{
		"enqueue_per_sec", "enqueue_concurrent_per_sec", "enqueue_batch_per_sec", "drain_per_sec", "e2e_per_sec",
		"latency_p50_ms", "latency_p99_ms", "load_latency_p50_ms", "load_latency_p99_ms", "load_per_sec",
		"worker_rss_mb", "worker_rss_loaded_mb", "pool_startup_ms", "broker_cpu_us_per_task", "client_cpu_us_per_task",
		"enqueue_producer_cpu_us_per_task", "enqueue_concurrent_producer_cpu_us_per_task",
		"drain_broker_cpu_us_per_task",
	}
	// Read in clock ticks of 10 ms, which a drain of 1,000 tasks may not
	// reach: present, not necessarily positive.
	benchPresentKeys = []string{"drain_worker_cpu_us_per_task"}
	benchScaleKeys   = []string{"e2e_per_sec", "pool_startup_ms", "worker_rss_mb"}
)

// checkBenchFigures checks the figures of one object of the JSON report.
func checkBenchFigures(t *testing.T, name string, m map[string]any) {
	t.Helper()
	for _, k := range benchKeys {
		if v, ok := m[k].(float64); !ok || v <= 0 {
			t.Errorf("%s: %s = %v, want a positive number", name, k, m[k])
		}
	}
	for _, k := range benchPresentKeys {
		if name == "ratio" {
			break // no ratio to a baseline figure of 0
		}
		if v, ok := m[k].(float64); !ok || v < 0 {
			t.Errorf("%s: %s = %v, want a number", name, k, m[k])
		}
	}
	scale, ok := m["scale"].(map[string]any)
	if !ok {
		t.Fatalf("%s: scale = %v, want an object", name, m["scale"])
	}
	for _, w := range []string{"1", "2"} {
		s, ok := scale[w].(map[string]any)
		if !ok {
			t.Errorf("%s: scale[%s] = %v, want an object", name, w, scale[w])
			continue
		}
		for _, k := range benchScaleKeys {
			if v, ok := s[k].(float64); !ok || v <= 0 {
				t.Errorf("%s: scale[%s].%s = %v, want a positive number", name, w, k, s[k])
			}
		}
	}
	if name == "ratio" {
		if _, ok := m["latency_dist"]; ok {
			t.Errorf("ratio: has latency_dist, a distribution to draw, not to divide")
		}
		return
	}
	checkDist(t, name+": latency_dist", m["latency_dist"], 20)
	checkDist(t, name+": load_latency_dist", m["load_latency_dist"], -1)
}

// checkDist checks a latency distribution of the JSON report: n probes
// (n < 0: some), a latency at each percentile, in order.
func checkDist(t *testing.T, name string, v any, n int) {
	t.Helper()
	var d struct {
		N           int       `json:"n"`
		Percentiles []float64 `json:"percentiles"`
		Ms          []float64 `json:"ms"`
	}
	b, _ := json.Marshal(v)
	if err := json.Unmarshal(b, &d); err != nil || d.N < 1 || n >= 0 && d.N != n {
		t.Errorf("%s = %v, want a distribution of %d probes", name, v, n)
		return
	}
	if len(d.Percentiles) < 100 || len(d.Ms) != len(d.Percentiles) || !slices.IsSorted(d.Ms) || d.Ms[0] <= 0 {
		t.Errorf("%s: got %d percentiles, latencies %v; want as many positive latencies, in order", name, len(d.Percentiles), d.Ms)
	}
}

// "forq bench --help" lists the measurement's flags, a broker that is not
// there is named, and a flag that would do nothing is refused.
func TestBenchHelpAndNoBroker(t *testing.T) {
	code, out, _ := run(t, nil, nil, "bench", "--help")
	if code != 0 || !strings.Contains(out, "--tasks") || !strings.Contains(out, "--baseline") {
		t.Errorf("forq bench --help: exit %d, want 0 and the flags --tasks and --baseline:\n%s", code, out)
	}
	code, _, errOut := run(t, nil, nil, "bench", "--url", "nats://127.0.0.1:1", "--tasks", "10", "--scale=")
	if code != 1 || !strings.Contains(errOut, "connect to the broker at nats://127.0.0.1:1") {
		t.Errorf("forq bench with no broker: exit %d, stderr %q; want 1 and the broker's URL named", code, errOut)
	}
	// --sync-always sets the embedded broker's fsync: with --url it
	// would do nothing, so it is refused.
	code, _, errOut = run(t, nil, nil, "bench", "--url", "nats://127.0.0.1:1", "--sync-always")
	if code != 2 || !strings.Contains(errOut, "--sync-always") {
		t.Errorf("forq bench --url --sync-always: exit %d, stderr %q; want 2 and the flag named", code, errOut)
	}
}
