package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tmpfs mounts a tmpfs of size (e.g. "32m") for the test and unmounts it
// at the end, after the test's processes are gone. It skips the test when
// mounting is not permitted.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a %s tmpfs to fill (needs root or CAP_SYS_ADMIN): %v", size, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return mnt
}

func freeBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}

// fill writes path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("fill %s: %v", path, err)
			}
			return
		}
	}
}

// runs counts the "done ID" lines of workers per task ID.
func runs(ws ...*proc) map[string]int {
	n := map[string]int{}
	for _, w := range ws {
		for _, id := range w.lines("done ") {
			n[id]++
		}
	}
	return n
}

// enqueueCLI enqueues one wordcount task with forq enqueue and returns its
// ID, or "" and the message when it was refused.
func enqueueCLI(t *testing.T, env []string, payloadFile string) (id string, code int, msg string, took time.Duration) {
	t.Helper()
	began := time.Now()
	code, out, errs := run(t, nil, env, "enqueue", "wordcount", "--queue", "words", "--file", payloadFile)
	took = time.Since(began)
	if code == 0 {
		return strings.TrimSpace(out), 0, "", took
	}
	return "", code, strings.TrimSpace(errs), took
}

// enqueueUntilRefused enqueues payload with the CLI until an enqueue is
// refused (a task may still fit in what the filler left), at most 20
// times, and returns the IDs of the tasks acknowledged before. The refusal
// must be exit 1 saying storage full.
func enqueueUntilRefused(t *testing.T, env []string, payload string) (acked []string) {
	t.Helper()
	for range 20 {
		id, code, msg, took := enqueueCLI(t, env, payload)
		if code == 0 {
			acked = append(acked, id)
			continue
		}
		figuref(t, "enqueue on a full disk: exit %d after %s: %s", code, took.Round(time.Millisecond), msg)
		if code != 1 || !strings.Contains(msg, "storage full") {
			t.Errorf("enqueue on a full disk: exit %d, %q; want exit 1 saying storage full", code, msg)
		}
		return acked
	}
	t.Fatal("20 enqueues on a full disk all succeeded")
	return nil
}

// notExited fails the test for each of procs that has exited.
func notExited(t *testing.T, when string, procs ...*proc) {
	t.Helper()
	for _, w := range procs {
		select {
		case <-w.done:
			t.Errorf("%s exited %s: %v; stderr %s", w.name, when, w.err, tail(w.stderr(), 2000))
		default:
		}
	}
}

// A real full disk (ENOSPC on a small tmpfs, filled by another file while
// the broker runs and tasks flow; issue 14, point 6): enqueues get a named
// error, forq health goes red, workers wait rather than exit, and once the
// file is removed the same broker process takes tasks again by itself. No
// acknowledged task is lost; a task runs twice only if it was finishing
// when the disk filled (its acknowledgement could not be kept).
func TestDiskFullENOSPC(t *testing.T) {
	mnt := tmpfs(t, "32m")
	b := startBroker(t, filepath.Join(mnt, "data"), 0)
	env := []string{"FORQ_URL=" + b.url, "FORQ_QUEUE=words"}
	const concurrency = 4
	const maxTwice = 100
	w1 := start(t, "worker", env, "-concurrency", fmt.Sprint(concurrency), "-work", "5ms")
	// The example producer retries a failed enqueue with the same task ID
	// until it is acknowledged, so it rides out the full disk.
	p := start(t, "producer", env, "-n", "3000")
	eventually(t, 60*time.Second, func() bool { return len(p.lines("enqueued ")) >= 300 && len(runs(w1)) >= 100 },
		"tasks did not get going: %d enqueued, %d ran", len(p.lines("enqueued ")), len(runs(w1)))
	var acked []string

	payload := filepath.Join(t.TempDir(), "payload.json")
	if err := os.WriteFile(payload, fmt.Appendf(nil, `{"text": %q}`, strings.Repeat("word ", 2000)), 0o600); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(mnt, "filler")
	fill(t, filler)
	figuref(t, "disk filled: %d bytes free", freeBytes(t, mnt))

	acked = append(acked, enqueueUntilRefused(t, env, payload)...)
	id, code, msg, took := enqueueCLI(t, env, payload)
	figuref(t, "next enqueue: exit %d after %s: %q", code, took.Round(time.Millisecond), msg)
	if code != 1 || !strings.Contains(msg, "storage full") || id != "" {
		t.Errorf("next enqueue on a full disk: exit %d, %q; want exit 1 saying storage full", code, msg)
	}
	code, out, errs := run(t, nil, env, "health")
	figuref(t, "forq health on a full disk: exit %d: %s%s", code, out, errs)
	if code != 1 || !strings.Contains(errs, "storage full") || !strings.Contains(errs, "disabled") {
		t.Errorf("forq health on a full disk: exit %d, %q; want exit 1 saying storage full, JetStream disabled", code, errs)
	}
	// A worker started now cannot declare its consumer: it waits. So do a
	// pool's, and the pool does not restart them.
	w2 := start(t, "worker", env, "-concurrency", "2")
	pool := start(t, "forq", env, "pool", "-n", "2", "--queue", "poolq")
	eventually(t, 20*time.Second, func() bool {
		return strings.Contains(w2.stderr(), "retrying") && strings.Count(pool.stderr(), "retrying") >= 2
	}, "workers started on a full disk did not say they wait; stderr %q, pool's %q", w2.stderr(), pool.stderr())
	time.Sleep(2 * time.Second)
	notExited(t, "on a full disk", w1, w2, pool)
	figuref(t, "new worker on a full disk says: %s", firstLine(w2.stderr(), "retrying"))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	eventually(t, 30*time.Second, func() bool { c, _, _ := run(t, nil, env, "health"); return c == 0 },
		"forq health still red 30s after space was freed")
	figuref(t, "healthy again %s after space was freed (%d bytes free)", time.Since(freed).Round(time.Millisecond), freeBytes(t, mnt))
	id, code, msg, took = enqueueCLI(t, env, payload)
	figuref(t, "enqueue after space was freed: exit %d after %s %s", code, took.Round(time.Millisecond), msg)
	if code != 0 {
		t.Fatalf("enqueue after space was freed: exit %d, %q", code, msg)
	}
	acked = append(acked, id)
	select {
	case <-b.done:
		t.Fatal("the broker exited")
	default:
	}
	eventually(t, 5*time.Second, func() bool { return strings.Contains(b.stderr(), "broker stores tasks again") },
		"the broker did not log that it stores tasks again; stderr %s", b.stderr())
	if !strings.Contains(b.stderr(), "broker cannot store tasks") {
		t.Errorf("the broker did not log that it could not store tasks; stderr %s", b.stderr())
	}
	figuref(t, "broker's log: %s", firstLine(b.stderr(), "cannot store"))
	code, out, errs = run(t, nil, env, "enqueue", "echo", "--queue", "poolq", "--payload", "after the full disk", "--wait")
	if code != 0 || strings.TrimSpace(out) != "after the full disk" {
		t.Errorf("a task for the pool started on the full disk: exit %d, %q %q", code, out, errs)
	}
	if n := strings.Count(pool.stderr(), "child started"); n != 2 {
		t.Errorf("the pool started %d children, want 2 (no restarts); stderr %s", n, tail(pool.stderr(), 3000))
	}

	if code := p.wait(120 * time.Second); code != 0 {
		t.Fatalf("producer through the full disk: exit code %d, want 0", code)
	}
	figuref(t, "producer's enqueue retries during the full disk: %d; its last: %s", strings.Count(p.stderr(), "retrying"), lastLine(p.stderr(), "retrying"))
	acked = append(acked, p.lines("enqueued ")...)
	eventually(t, 60*time.Second, func() bool { return len(missing(acked, asSet(runs(w1, w2)))) == 0 },
		"%d of %d acknowledged tasks never ran, e.g. %v", len(missing(acked, asSet(runs(w1, w2)))), len(acked), missing(acked, asSet(runs(w1, w2))))
	time.Sleep(time.Second) // let a second run show
	var twice []string
	for id, n := range runs(w1, w2) {
		if n > 1 {
			twice = append(twice, fmt.Sprintf("%s ×%d", id, n))
		}
	}
	figuref(t, "%d acknowledged tasks, all ran; %d ran twice %v; worker 2 ran %d", len(acked), len(twice), twice, len(runs(w2)))
	// What runs twice is what was in flight, and what the broker had
	// acknowledged but not yet written (its write buffer) when the write
	// failed: 10-12 tasks in runs of this test. A broker that keeps its
	// failed stream up even 2 s longer loses every acknowledgement in that
	// time: 804 and 969 tasks ran twice when it was tried.
	if len(twice) > maxTwice {
		t.Errorf("%d tasks ran twice, more than %d: acknowledgements were lost after the disk filled", len(twice), maxTwice)
	}
}

func lastLine(s, sub string) string {
	ls := strings.Split(s, "\n")
	for i := len(ls) - 1; i >= 0; i-- {
		if strings.Contains(ls[i], sub) {
			return ls[i]
		}
	}
	return ""
}

// JetStream's own storage limit (75% of the disk's free space when the
// broker first started): enqueues get the same named error, forq health is
// red while the limit is reached, and both recover once workers drain the
// queue.
func TestDiskFullJetStreamLimit(t *testing.T) {
	mnt := tmpfs(t, "8m")
	b := startBroker(t, filepath.Join(mnt, "data"), 0)
	env := []string{"FORQ_URL=" + b.url, "FORQ_QUEUE=words"}
	payload := filepath.Join(t.TempDir(), "payload.json")
	if err := os.WriteFile(payload, fmt.Appendf(nil, `{"text": %q}`, strings.Repeat("word ", 50000)), 0o600); err != nil {
		t.Fatal(err)
	}
	var acked []string
	refused := ""
	for i := 0; i < 100 && refused == ""; i++ {
		id, code, msg, took := enqueueCLI(t, env, payload)
		if code == 0 {
			acked = append(acked, id)
			continue
		}
		refused = msg
		figuref(t, "enqueue %d (250 KB each) at the limit: exit %d after %s: %s (%d bytes free on disk)", i, code, took.Round(time.Millisecond), msg, freeBytes(t, mnt))
		if code != 1 || !strings.Contains(msg, "storage full") || !strings.Contains(msg, "insufficient resources") {
			t.Errorf("enqueue at the limit: exit %d, %q; want exit 1 saying storage full", code, msg)
		}
	}
	if refused == "" {
		t.Fatal("100 enqueues of 250 KB on an 8 MB disk all succeeded")
	}
	code, out, errs := run(t, nil, env, "health")
	figuref(t, "forq health at the limit: exit %d: %s%s", code, out, errs)
	if code != 1 || !strings.Contains(errs, "storage full") || !strings.Contains(errs, "limit") {
		t.Errorf("forq health at the limit: exit %d, %q; want exit 1 saying the storage limit is reached", code, errs)
	}

	eventually(t, 5*time.Second, func() bool {
		return strings.Contains(b.stderr(), "broker cannot store tasks") && strings.Contains(b.stderr(), "storage limit")
	}, "the broker did not log that its storage limit was reached; stderr %s", b.stderr())
	w := start(t, "worker", env, "-concurrency", "4")
	eventually(t, 60*time.Second, func() bool { return len(missing(acked, asSet(runs(w)))) == 0 },
		"the worker ran %d of %d tasks", len(runs(w)), len(acked))
	eventually(t, 20*time.Second, func() bool { c, _, _ := run(t, nil, env, "health"); return c == 0 },
		"forq health still red after the queue drained")
	id, code, msg, _ := enqueueCLI(t, env, payload)
	if code != 0 {
		t.Fatalf("enqueue after the queue drained: exit %d, %q", code, msg)
	}

	acked = append(acked, id)
	eventually(t, 30*time.Second, func() bool { return len(missing(acked, asSet(runs(w)))) == 0 }, "the task enqueued after the drain never ran")
	for id, n := range runs(w) {
		if n > 1 {
			t.Errorf("task %s ran %d times", id, n)
		}
	}
	figuref(t, "%d acknowledged tasks, all ran once", len(acked))
}

func asSet(m map[string]int) map[string]bool {
	s := make(map[string]bool, len(m))
	for k := range m {
		s[k] = true
	}
	return s
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
