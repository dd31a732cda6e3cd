package e2e

// forq against plain nats-server processes of other releases, started by
// the test, as an operator runs them: the current one (the module's own
// nats-server) runs the whole queue; an older one runs what it can, and
// what it cannot is refused at once with the version it needs (the
// README's "Server versions").
//
// .ci/run builds the servers from the Go module proxy and names them in
// FORQ_NATS_SERVER (the current release) and FORQ_NATS_SERVERS_OLD (older
// releases, separated by ':'); without them the tests skip, and under CI
// they fail.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const natsServersHint = "build them as .ci/run does (its step \"nats-server releases\") and set FORQ_NATS_SERVER / FORQ_NATS_SERVERS_OLD"

// natsServerBins returns the nats-server binaries named by the environment
// variable env (a ':'-separated list), or skips the test (fails it under
// CI, which must build them).
func natsServerBins(t *testing.T, env string) []string {
	t.Helper()
	waitForTools(t)
	var bins []string
	for _, p := range filepath.SplitList(os.Getenv(env)) {
		if p != "" {
			bins = append(bins, p)
		}
	}
	if len(bins) == 0 {
		msg := env + " is not set: no nats-server to test against; " + natsServersHint
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bins
}

var serverVersion = regexp.MustCompile(`^nats-server: v(\d+)\.(\d+)\.(\d+)\S*$`)

// natsServerVersion runs bin --version and returns its version ("2.11.17")
// and minor release (11).
func natsServerVersion(t *testing.T, bin string) (string, int) {
	t.Helper()
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v; %s", bin, err, natsServersHint)
	}
	m := serverVersion.FindStringSubmatch(strings.TrimSpace(string(out)))
	if m == nil || m[1] != "2" {
		t.Fatalf("%s --version says %q: not a nats-server 2.x", bin, out)
	}
	minor, _ := strconv.Atoi(m[2])
	return strings.TrimPrefix(strings.Fields(string(out))[1], "v"), minor
}

// natsServer is a plain nats-server process with JetStream, on loopback.
type natsServer struct {
	url     string
	version string
}

// startNatsServer runs bin with JetStream, its storage in a temporary
// directory, on a free loopback port, and waits until JetStream answers.
// The test's cleanup stops it (SIGTERM, then SIGKILL) and waits for it.
func startNatsServer(t *testing.T, bin, version string) *natsServer {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(bin, "-js", "-sd", t.TempDir(), "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	var mu sync.Mutex
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = lockedWriter{&mu, &out}, lockedWriter{&mu, &out}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // its exit status does not matter: it is stopped
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("nats-server %s log (last 3000 bytes):\n%s", version, tail(out.String(), 3000))
		}
	})
	s := &natsServer{url: fmt.Sprintf("nats://127.0.0.1:%d", port), version: version}
	eventually(t, 20*time.Second, func() bool {
		nc, err := nats.Connect(s.url)
		if err != nil {
			return false
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return false
		}
		_, err = js.AccountInfo(t.Context())
		return err == nil
	}, "nats-server %s on %s: JetStream does not answer", version, s.url)
	return s
}

// js connects to the server for inspection.
func (s *natsServer) js(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// Against each older nats-server: a feature the server lacks is refused
// at once, before anything is stored, with a message that names what it
// needs and the server's version; what the server has works. nats-server
// 2.10 lacks per-message TTLs, which forq's buckets use: nothing of forq
// starts, and a worker exits at once rather than retrying. 2.11 runs
// immediate tasks but has no message schedules: delayed tasks and
// periodic schedules are refused. 2.12 schedules a message "@at" a time,
// so delayed tasks run, but not "@every" an interval: periodic schedules
// are refused.
func TestOlderServerRefusesWhatItLacks(t *testing.T) {
	bins := natsServerBins(t, "FORQ_NATS_SERVERS_OLD")
	tested := map[int]bool{}
	for _, b := range bins {
		version, minor := natsServerVersion(t, b)
		if minor >= 14 {
			t.Fatalf("FORQ_NATS_SERVERS_OLD names %s, nats-server %s: not an older release", b, version)
		}
		tested[minor] = true
		t.Run("v"+version, func(t *testing.T) {
			s := startNatsServer(t, b, version)
			env := []string{"FORQ_URL=" + s.url, "FORQ_CONNECT_TIMEOUT=10s"}
			if minor < 11 {
				checkServerTooOldForForq(t, s, env)
				return
			}
			checkScheduledTasksOnOlderServer(t, s, env, minor)
		})
	}
	// CI builds one release of each row of the README's table below 2.14.
	for _, minor := range []int{10, 11, 12} {
		if !tested[minor] && os.Getenv("CI") != "" {
			t.Errorf("FORQ_NATS_SERVERS_OLD has no nats-server 2.%d; CI tests each of 2.10, 2.11 and 2.12", minor)
		}
	}
}

// tooOld checks that a forq command failed at once with exit 1 and said
// the server is too old for what it asked: need is the version named as
// needed, want a word of the feature.
func tooOld(t *testing.T, what string, code int, stderr, need, version, want string) {
	t.Helper()
	for _, s := range []string{"NATS server too old", want, "nats-server " + need + " or later", "is " + version} {
		if code != 1 || !strings.Contains(stderr, s) {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 and a message containing %q", what, code, stderr, s)
			return
		}
	}
}

// checkServerTooOldForForq: on a server without per-message TTLs every
// forq command that declares forq's streams fails naming 2.11.0, and
// declares nothing.
func checkServerTooOldForForq(t *testing.T, s *natsServer, env []string) {
	t.Helper()
	begin := time.Now()
	code, _, errs := run(t, nil, env, "enqueue", "echo", "--payload", "hi", "--wait")
	tooOld(t, "enqueue", code, errs, "2.11.0", s.version, "forq")
	figuref(t, "forq enqueue on nats-server %s: refused in %s", s.version, time.Since(begin).Round(time.Millisecond))
	code, _, errs = run(t, nil, env, "enqueue", "echo", "--payload", "later", "--in", "2s", "--wait")
	tooOld(t, "enqueue --in", code, errs, "2.11.0", s.version, "forq")
	code, _, errs = run(t, nil, env, "schedule", "add", "tick", "echo", "--every", "1s")
	tooOld(t, "schedule add --every", code, errs, "2.11.0", s.version, "forq")
	// A worker does not wait for the server to change: it exits.
	w := start(t, "forq", env, "work")
	code = w.wait(30 * time.Second)
	tooOld(t, "work", code, w.stderr(), "2.11.0", s.version, "forq")
	if _, err := s.js(t).Stream(t.Context(), forq.StreamTasks); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream %s on nats-server %s: %v; want it not declared", forq.StreamTasks, s.version, err)
	}
}

// checkScheduledTasksOnOlderServer: on nats-server 2.11 (minor 11) or 2.12
// an immediate task runs and --wait returns its result; a delayed task
// runs on 2.12 and is refused on 2.11; a periodic schedule is refused on
// both. A refused command stores nothing.
func checkScheduledTasksOnOlderServer(t *testing.T, s *natsServer, env []string, minor int) {
	t.Helper()
	start(t, "forq", env, "work", "--concurrency", "2")
	code, out, errs := run(t, nil, env, "enqueue", "echo", "--payload", "hi", "--wait")
	if code != 0 || strings.TrimSpace(out) != "hi" {
		t.Fatalf("enqueue --wait on nats-server %s: exit %d, stdout %q, stderr %q; want exit 0 and hi", s.version, code, out, errs)
	}

	begin := time.Now()
	code, out, errs = run(t, nil, env, "enqueue", "echo", "--payload", "later", "--in", "1s", "--wait")
	took := time.Since(begin)
	if minor < 12 {
		tooOld(t, "enqueue --in", code, errs, "2.12.0", s.version, "delayed task")
		figuref(t, "forq enqueue --in 1s --wait on nats-server %s: refused in %s", s.version, took.Round(time.Millisecond))
	} else if code != 0 || strings.TrimSpace(out) != "later" {
		t.Errorf("enqueue --in 1s --wait on nats-server %s: exit %d, stdout %q, stderr %q; want exit 0 and later", s.version, code, out, errs)
	}

	code, _, errs = run(t, nil, env, "schedule", "add", "tick", "echo", "--every", "1s")
	tooOld(t, "schedule add --every", code, errs, "2.14.0", s.version, "periodic schedule")
	code, out, errs = run(t, nil, env, "schedule", "ls")
	if code != 0 || strings.Contains(out, "tick") {
		t.Errorf("schedule ls after a refused add: exit %d, stdout %q, stderr %q; want exit 0 and no schedule tick", code, out, errs)
	}

	js := s.js(t)
	for _, subject := range []string{forq.SubjectSchedulePrefix + ">", forq.SubjectPeriodicPrefix + ">"} {
		if n := streamMsgs(t, js, forq.StreamTasks, subject); n != 0 {
			t.Errorf("%s holds %d messages on %s after the run on nats-server %s, want 0", forq.StreamTasks, n, subject, s.version)
		}
	}
}

// Done-when 7 of issue 16: the queue's main flow against a separate plain
// nats-server process of the current release (-js -sd <dir>), not forq's
// embedded broker: 2,000 tasks enqueued at once are each run once by a
// pool of two workers, waits see results, a failing task is dead-lettered,
// and forq stats and forq tasks show the queues.
func TestPlainNatsServerRunsTheQueue(t *testing.T) {
	bins := natsServerBins(t, "FORQ_NATS_SERVER")
	version, minor := natsServerVersion(t, bins[0])
	if minor < 14 {
		t.Fatalf("FORQ_NATS_SERVER is nats-server %s: want the current release (the module's, 2.14 or later)", version)
	}
	s := startNatsServer(t, bins[0], version)
	env := []string{"FORQ_URL=" + s.url}
	const n = 2000
	begin := time.Now()
	ids := enqueueLines(t, env, "echo", n, strconv.Itoa, "--record")
	if len(ids) != n {
		t.Fatalf("enqueue printed %d IDs, want %d", len(ids), n)
	}
	p := start(t, "forq", env, "--log-level", "debug", "pool", "-n", "2", "--concurrency", "4")
	eventually(t, 120*time.Second, func() bool { got, _ := handled(p); return len(got) >= n },
		"processed %d of %d", func() int { got, _ := handled(p); return len(got) }(), n)
	figuref(t, "nats-server %s: %d tasks enqueued and run by a pool of 2 in %s", version, n, time.Since(begin).Round(time.Millisecond))
	got, pids := handled(p)
	done, dups := set(got)
	if len(dups) > 0 {
		t.Errorf("%d tasks processed more than once, e.g. %s", len(dups), dups[0])
	}
	if m := missing(ids, done); len(m) > 0 {
		t.Errorf("%d tasks never processed, e.g. %s", len(m), m[0])
	}
	if len(pids) != 2 {
		t.Errorf("tasks ran in %d processes (%v), want the pool's 2", len(pids), pids)
	}

	// Waits see results: of tasks done, and of one enqueued now.
	for _, i := range []int{0, n - 1} {
		code, out, errs := run(t, nil, env, "result", ids[i], "--wait", "--json")
		var r forq.Result
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.State != forq.StateSucceeded || string(r.Result) != strconv.Itoa(i) {
			t.Errorf("result %s --wait: exit %d, %q (stderr %q); want succeeded with result %d", ids[i], code, out, errs, i)
		}
	}
	code, out, errs := run(t, nil, env, "enqueue", "echo", "--payload", "hello", "--wait")
	if code != 0 || strings.TrimSpace(out) != "hello" {
		t.Errorf("enqueue --wait: exit %d, stdout %q, stderr %q; want exit 0 and hello", code, out, errs)
	}

	// A task no worker can run is dead-lettered after its one attempt.
	code, out, errs = run(t, nil, env, "enqueue", "no-such-type", "--max-attempts", "1", "--record", "--payload", "x")
	if code != 0 {
		t.Fatalf("enqueue no-such-type: exit %d: %s", code, errs)
	}
	deadID := strings.TrimSpace(out)
	code, out, _ = run(t, nil, env, "result", deadID, "--wait")
	if code != 1 || !strings.Contains(out, "state:     dead") {
		t.Errorf("result %s --wait: exit %d, %q; want exit 1 and state dead", deadID, code, out)
	}
	if ds := deadLetters(t, env); !slices.Equal(deadIDs(ds), []string{deadID}) {
		t.Errorf("dead ls lists %v, want [%s]", deadIDs(ds), deadID)
	}

	checkStatsAndTasks(t, env)

	if m := streamMsgs(t, s.js(t), forq.StreamTasks, forq.SubjectTasksPrefix+"default"); m != 0 {
		t.Errorf("%s holds %d tasks of queue default after the run, want 0", forq.StreamTasks, m)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("pool exit code %d after SIGTERM, want 0", code)
	}
}

// checkStatsAndTasks: forq stats shows the queue default, nothing queued,
// its one dead letter, and the pool's two workers; forq tasks lists the
// tasks waiting in a queue no worker serves.
func checkStatsAndTasks(t *testing.T, env []string) {
	t.Helper()
	var st admin.Stats
	stats := func() bool {
		code, out, _ := run(t, nil, env, "stats", "--json")
		st = admin.Stats{}
		return code == 0 && json.Unmarshal([]byte(out), &st) == nil
	}
	eventually(t, 20*time.Second, func() bool {
		if !stats() || len(st.Workers) != 2 {
			return false
		}
		for _, q := range st.Queues {
			if q.Queue == "default" && q.Queued == 0 && q.Running == 0 && q.Dead == 1 {
				return true
			}
		}
		return false
	}, "forq stats: %+v; want queue default with nothing queued or running, 1 dead, and 2 workers", st)

	var want []string
	for i := range 3 {
		code, out, errs := run(t, nil, env, "enqueue", "echo", "--queue", "idle", "--payload", "waiting "+strconv.Itoa(i))
		if code != 0 {
			t.Fatalf("enqueue --queue idle: exit %d: %s", code, errs)
		}
		want = append(want, strings.TrimSpace(out))
	}
	code, out, errs := run(t, nil, env, "tasks", "--queue", "idle", "--json")
	// The fields of forq tasks --json this test reads.
	var tasks []struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Preview []byte `json:"preview"`
	}
	if err := json.Unmarshal([]byte(out), &tasks); code != 0 || err != nil {
		t.Fatalf("tasks --queue idle --json: exit %d, %v: %q (stderr %q)", code, err, out, errs)
	}
	var listed []string
	for _, ti := range tasks {
		if ti.State != string(admin.StateQueued) {
			t.Errorf("tasks lists %s as %s, want queued", ti.ID, ti.State)
		}
		if !strings.HasPrefix(string(ti.Preview), "waiting ") {
			t.Errorf("tasks lists %s with preview %q, want its payload", ti.ID, ti.Preview)
		}
		listed = append(listed, ti.ID)
	}
	slices.Sort(listed)
	slices.Sort(want)
	if !slices.Equal(listed, want) {
		t.Errorf("tasks --queue idle lists %v, want %v", listed, want)
	}
}
