package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// "forq bench" runs end to end with a small N and reports, as JSON, every
// documented figure for forq, the baseline and their ratio. No speed is
// asserted: only that each figure was measured.
func TestBenchReportsEveryFigure(t *testing.T) {
	code, out, errOut := run(t, nil, nil, "bench", "--tasks", "1000", "--workers", "2", "--samples", "20",
		"--rate", "500", "--scale", "1,2", "--baseline", "--json")
	if code != 0 {
		t.Fatalf("forq bench exit code %d, want 0; stderr:\n%s", code, tail(errOut, 3000))
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	keys := []string{
		"enqueue_per_sec", "enqueue_batch_per_sec", "drain_per_sec", "e2e_per_sec",
		"latency_p50_ms", "latency_p99_ms", "load_latency_p50_ms", "load_latency_p99_ms", "load_per_sec",
		"worker_rss_mb", "worker_rss_loaded_mb", "pool_startup_ms", "broker_cpu_us_per_task", "client_cpu_us_per_task",
		"drain_broker_cpu_us_per_task",
	}
	// Read in clock ticks of 10 ms, which a drain of 1,000 tasks may not
	// reach: present, not necessarily positive.
	presentKeys := []string{"drain_worker_cpu_us_per_task"}
	scaleKeys := []string{"e2e_per_sec", "pool_startup_ms", "worker_rss_mb"}
	check := func(name string, m map[string]any) {
		t.Helper()
		for _, k := range keys {
			if v, ok := m[k].(float64); !ok || v <= 0 {
				t.Errorf("%s: %s = %v, want a positive number", name, k, m[k])
			}
		}
		for _, k := range presentKeys {
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
			for _, k := range scaleKeys {
				if v, ok := s[k].(float64); !ok || v <= 0 {
					t.Errorf("%s: scale[%s].%s = %v, want a positive number", name, w, k, s[k])
				}
			}
		}
	}
	check("forq", rep)
	for _, obj := range []string{"baseline", "ratio"} {
		m, ok := rep[obj].(map[string]any)
		if !ok {
			t.Fatalf("%s = %v, want an object", obj, rep[obj])
		}
		check(obj, m)
	}
	if s, ok := rep["settings"].(map[string]any); !ok || s["workers"] != 2.0 || s["tasks"] != 1000.0 {
		t.Errorf("settings = %v, want workers 2 and tasks 1000", rep["settings"])
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
