package e2e

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
)

// A pool started with --name shows that name, not the host name, for its
// workers in forq stats and in the results of their tasks; FORQ_NAME does
// the same for forq work. A name a terminal would misread is refused.
func TestWorkerNameShownInStatsAndResults(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "pool", "-n", "2", "-q", "named", "--name", "web-1")
	start(t, "forq", append(env, "FORQ_NAME=batch host"), "work", "-q", "named")

	host, _ := os.Hostname()
	var hosts []string
	eventually(t, 30*time.Second, func() bool {
		code, out, _ := run(t, nil, env, "stats", "--json", "-q", "named")
		var st admin.Stats
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		hosts = hosts[:0]
		for _, w := range st.Workers {
			hosts = append(hosts, w.Host)
		}
		return len(hosts) == 3
	}, "forq stats lists workers on %v, want 3 workers", hosts)
	if want := []string{"batch host", "web-1", "web-1"}; !slices.Equal(hosts, want) {
		t.Errorf("forq stats: workers on %v, want %v (not the host name %q)", hosts, want, host)
	}
	// The status keys keep the host name: workers of one name on two
	// hosts (two containers of a service) never share one.
	kv, err := b.js(t).KeyValue(context.Background(), forq.BucketWorkers)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	prefix := strings.TrimSuffix(forq.WorkerKey(host, 0), "0")
	for k := range keys.Keys() {
		if !strings.HasPrefix(k, prefix) {
			t.Errorf("worker status key %q, want it to start with the host's %q", k, prefix)
		}
	}
	code, out, errs := run(t, nil, env, "stats", "-q", "named")
	if code != 0 || !strings.Contains(out, "web-1") || !strings.Contains(out, "batch host") {
		t.Errorf("forq stats: exit %d, stdout %q, stderr %q; want the names web-1 and batch host", code, out, errs)
	}

	code, out, errs = run(t, nil, env, "enqueue", "echo", "-q", "named", "--payload", "hi", "--record")
	if code != 0 {
		t.Fatalf("enqueue: exit %d, stderr %q", code, errs)
	}
	id := strings.TrimSpace(out)
	code, out, errs = run(t, nil, env, "result", id, "--wait", "--wait-timeout", "30s", "--json")
	var r forq.Result
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
		t.Fatalf("result --wait --json: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if r.Host != "web-1" && r.Host != "batch host" {
		t.Errorf("the task's result says it ran on %q, want web-1 or batch host", r.Host)
	}

	code, _, errs = run(t, nil, env, "work", "--name", "bad\x1b[2Jname")
	if code != 2 || !strings.Contains(errs, "--name") || !strings.Contains(errs, "control character") {
		t.Errorf("forq work --name with an escape: exit %d, stderr %q; want 2 naming --name and the control character", code, errs)
	}
}
