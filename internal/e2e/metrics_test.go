package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const promtoolInstall = "apt-get install prometheus (Debian's package has promtool)"

// promtool returns the path of promtool, or "" when it is not installed
// and this is not CI (which must install it: the test fails there).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("promtool is not installed; install it with: %s", promtoolInstall)
		}
		t.Logf("promtool is not installed (%s): its checks are skipped", promtoolInstall)
		return ""
	}
	return p
}

// scrapeChecked fetches url, checks the scrape with promtool check
// metrics (when promtool is there) and parses it.
func scrapeChecked(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s %v", url, resp.Status, err)
	}
	if p := promtool(t); p != "" {
		cmd := exec.Command(p, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics of %s: %v\n%s", url, err, out)
		}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	return fams
}

// The done-when: with no worker running, the broker's /metrics
// shows a queue's depth and its oldest task's age rising as tasks are
// enqueued, and every scrape passes promtool check metrics.
func TestBrokerMetricsWithoutWorker(t *testing.T) {
	port, mport := freePort(t), freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p := start(t, "forq", nil, "broker", "--data-dir", t.TempDir(), "--port", strconv.Itoa(port), "--metrics-port", strconv.Itoa(mport))
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	eventually(t, 20*time.Second, func() bool { return status(fmt.Sprintf("http://127.0.0.1:%d/readyz", mport)) == 200 },
		"broker /readyz never OK; stderr %s", p.stderr())
	env := []string{"FORQ_URL=" + url}
	q := map[string]string{"queue": "mq"}
	fams := scrapeChecked(t, metrics)
	if got := value(fams, "forq_build_info", nil); got != 1 {
		t.Errorf("forq_build_info = %v, want 1", got)
	}
	if got := value(fams, "forq_queue_stats_up", nil); got != 1 {
		t.Errorf("forq_queue_stats_up = %v, want 1", got)
	}
	if got := value(fams, "forq_queue_queued", q); got != -1 {
		t.Errorf("forq_queue_queued of a queue nobody used = %v, want no series", got)
	}
	var lastDepth, lastAge float64
	for round := 1; round <= 3; round++ {
		enqueueLines(t, env, "echo", 2, strconv.Itoa, "--queue", "mq")
		if round == 1 {
			// Some time for the oldest task to age in.
			time.Sleep(1100 * time.Millisecond)
		}
		fams = scrapeChecked(t, metrics)
		depth := value(fams, "forq_queue_queued", q)
		age := value(fams, "forq_queue_oldest_task_age_seconds", map[string]string{"queue": "mq", "priority": "normal"})
		t.Logf("round %d: forq_queue_queued{queue=mq} %v, oldest task age %.3f s", round, depth, age)
		if depth != float64(2*round) {
			t.Errorf("round %d: forq_queue_queued{queue=mq} = %v, want %d", round, depth, 2*round)
		}
		if age <= lastAge || (round == 1 && age < 1) {
			t.Errorf("round %d: oldest task age %v s, want more than %v (and at least 1 s after the first wait)", round, age, lastAge)
		}
		if depth <= lastDepth {
			t.Errorf("round %d: depth %v did not rise from %v", round, depth, lastDepth)
		}
		lastDepth, lastAge = depth, age
	}
	for family, want := range map[string]float64{
		"forq_queue_workers": 0, "forq_queue_running": 0, "forq_queue_unacked": 0, "forq_queue_retrying": 0,
		"forq_queue_scheduled": 0, "forq_queue_dead": 0, "forq_queue_paused": 0,
	} {
		if got := value(fams, family, q); got != want {
			t.Errorf("%s{queue=mq} = %v, want %v", family, got, want)
		}
	}
	// A high-priority task, a delayed one and a pause show on their own
	// series.
	if code, _, errs := run(t, nil, env, "enqueue", "echo", "--queue", "mq", "--priority", "high"); code != 0 {
		t.Fatalf("enqueue --priority high: exit %d: %s", code, errs)
	}
	if code, _, errs := run(t, nil, env, "enqueue", "echo", "--queue", "mq", "--in", "1h"); code != 0 {
		t.Fatalf("enqueue --in 1h: exit %d: %s", code, errs)
	}
	if code, _, errs := run(t, nil, env, "pause", "mq"); code != 0 {
		t.Fatalf("pause: exit %d: %s", code, errs)
	}
	fams = scrapeChecked(t, metrics)
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"forq_queue_queued", map[string]string{"queue": "mq", "priority": "high"}, 1},
		{"forq_queue_queued", map[string]string{"queue": "mq", "priority": "normal"}, 6},
		{"forq_queue_queued", map[string]string{"queue": "mq", "priority": "low"}, 0},
		{"forq_queue_oldest_task_age_seconds", map[string]string{"queue": "mq", "priority": "low"}, 0},
		{"forq_queue_scheduled", q, 1},
		{"forq_queue_paused", q, 1},
	} {
		if got := value(fams, c.family, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	if age := value(fams, "forq_queue_oldest_task_age_seconds", map[string]string{"queue": "mq", "priority": "high"}); age <= 0 || age >= lastAge {
		t.Errorf("oldest high task age %v s, want above 0 and below the normal level's %v", age, lastAge)
	}
}

// A worker's type label takes only the types it handles: a task of any
// other type, published by anyone, counts as "other". It reports the
// queue wait and handler duration of its tasks, its capacity, and no
// queue depth (the broker's to report).
func TestWorkerMetricsBoundedTypes(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	port := freePort(t)
	start(t, "forq", env, "work", "--metrics-port", strconv.Itoa(port), "--concurrency", "3", "--retry-base", "10ms")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 20*time.Second, func() bool { return status(base+"/readyz") == 200 }, "worker never ready")
	enqueueLines(t, env, "echo", 5, strconv.Itoa)
	nc, err := nats.Connect(b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	stray := fmt.Sprintf("stray-%08x", rand.Uint32())
	m := nats.NewMsg("forq.tasks.default")
	m.Header.Set("Forq-Type", stray)
	m.Header.Set("Forq-Max-Attempts", "1")
	m.Data = []byte("x")
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	var fams map[string]*dto.MetricFamily
	eventually(t, 30*time.Second, func() bool {
		fams = scrapeChecked(t, base+"/metrics")
		return value(fams, "forq_tasks_processed_total", nil) == 5 && value(fams, "forq_tasks_failed_total", map[string]string{"type": "other"}) >= 1
	}, "the worker never counted the 5 echo tasks and the stray one")
	for name, f := range fams {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "type" && !slices.Contains([]string{"echo", "sleep", "exec", "other"}, l.GetValue()) {
					t.Errorf("%s has type label %q: want only the worker's types or other", name, l.GetValue())
				}
			}
		}
	}
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"forq_task_queue_wait_seconds", map[string]string{"queue": "default", "type": "echo"}, 5},
		{"forq_task_duration_seconds", map[string]string{"queue": "default", "type": "echo"}, 5},
		{"forq_worker_capacity", nil, 3},
		{"forq_build_info", nil, 1},
		{"forq_queue_depth", nil, -1},
		{"forq_queue_running", nil, -1},
	} {
		if got := value(fams, c.family, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	// The buckets step x2 from 1 ms.
	h := fams["forq_task_queue_wait_seconds"].Metric[0].GetHistogram()
	if n := len(h.Bucket); n < 16 || h.Bucket[0].GetUpperBound() != 0.001 || h.Bucket[1].GetUpperBound() != 0.002 {
		t.Errorf("queue wait buckets: %d, first %v, %v; want x2 steps from 1 ms", n, h.Bucket[0].GetUpperBound(), h.Bucket[1].GetUpperBound())
	}
}

// forq run serves the queues' state beside its pool's figures, and every
// forq_ metric the shipped dashboard and alert rules use is one that forq
// exports (forq run's endpoints, or the producer's collector).
func TestRunMetricsAndShippedNames(t *testing.T) {
	port, mport := freePort(t), freePorts(t, 2)
	env := []string{fmt.Sprintf("FORQ_URL=nats://127.0.0.1:%d", port)}
	start(t, "forq", nil, "run", "--data-dir", t.TempDir(), "--port", strconv.Itoa(port), "-n", "1", "--metrics-port", strconv.Itoa(mport))
	pool := fmt.Sprintf("http://127.0.0.1:%d", mport)
	eventually(t, 30*time.Second, func() bool { return status(pool+"/readyz") == 200 }, "forq run never ready")
	enqueueLines(t, env, "echo", 3, strconv.Itoa)
	enqueueLines(t, env, "nope", 1, strconv.Itoa, "--max-attempts", "1")
	names := map[string]bool{}
	eventually(t, 30*time.Second, func() bool {
		fams := scrapeChecked(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", mport+1))
		return value(fams, "forq_tasks_processed_total", nil) == 3 && value(fams, "forq_tasks_dead_total", nil) == 1
	}, "forq run's worker never ran the 4 tasks")
	for _, u := range []string{pool + "/metrics", fmt.Sprintf("http://127.0.0.1:%d/metrics", mport+1)} {
		for n := range scrapeChecked(t, u) {
			names[n] = true
		}
	}
	for _, want := range []string{"forq_queue_queued", "forq_queue_oldest_task_age_seconds", "forq_pool_children", "forq_task_queue_wait_seconds", "forq_build_info"} {
		if !names[want] {
			t.Errorf("forq run's endpoints lack %s", want)
		}
	}
	producer, err := os.ReadFile("../../producer/metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`forq_[a-z_]*[a-z]`)
	for _, f := range []string{"../../docs/grafana/forq.json", "../../docs/prometheus/alerts.yml"} {
		doc, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range used.FindAllString(string(doc), -1) {
			family := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if !names[family] && !(strings.HasPrefix(n, "forq_producer_") && bytes.Contains(producer, []byte(`"`+n+`"`))) {
				t.Errorf("%s uses %s, which no forq process exports", f, n)
			}
		}
	}
}

// The shipped dashboard is JSON Grafana can import, and the alert rules
// pass promtool check rules.
func TestShippedDashboardAndAlerts(t *testing.T) {
	raw, err := os.ReadFile("../../docs/grafana/forq.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("docs/grafana/forq.json: %v", err)
	}
	if dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("docs/grafana/forq.json: title %q, %d panels; want a dashboard", dash.Title, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 || p.Targets[0].Expr == "" {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	if p := promtool(t); p != "" {
		if out, err := exec.Command(p, "check", "rules", "../../docs/prometheus/alerts.yml").CombinedOutput(); err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
	}
}
