package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// deadLetters runs "forq dead ls --json" and decodes it.
func deadLetters(t *testing.T, env []string, args ...string) []admin.DeadLetter {
	t.Helper()
	code, out, errs := run(t, nil, env, append([]string{"dead", "ls", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("forq dead ls: exit %d: %s", code, errs)
	}
	var ds []admin.DeadLetter
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("forq dead ls --json: %v: %q", err, out)
	}
	return ds
}

func deadIDs(ds []admin.DeadLetter) []string {
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	slices.Sort(ids)
	return ids
}

// Tasks that used up their attempts are listed, shown, retried (and then
// complete, their attempts reset) or purged with "forq dead". The retry
// comes at once after the tasks died, inside the broker's two-minute
// duplicate window of their enqueue, and is not dropped as a duplicate; a
// retried task that dies again gets a new dead letter.
func TestDeadLettersRetryAndPurge(t *testing.T) {
	b := startBroker(t, "", 0)
	f := &deadFixture{env: []string{"FORQ_URL=" + b.url}, js: b.js(t)}
	start(t, "forq", f.env, "work", "--queue", "dq", "--allow-exec", "--concurrency", "8", "--retry-base", "50ms")
	f.enqueue(t)

	eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, f.env)) == len(f.all) }, "dead letters: %v, want %d", deadIDs(deadLetters(t, f.env)), len(f.all))
	ds := deadLetters(t, f.env, "--queue", "dq")
	if got := deadIDs(ds); !slices.Equal(got, f.all) {
		t.Fatalf("dead ls lists %v, want %v", got, f.all)
	}
	f.checkList(t, ds)
	f.checkBadInput(t)
	f.retry(t, ds)
	f.purge(t)
}

// deadFixture is the state of TestDeadLettersRetryAndPurge: its tasks and
// the broker they are on.
type deadFixture struct {
	env      []string
	js       jetstream.JetStream
	marker   string   // the file whose presence lets the fixable tasks succeed
	fixable  []string // exec tasks that fail until marker exists
	hopeless string   // an exec task that always fails
	unknown  []string // tasks of a type no worker has
	all      []string // every task above, sorted
}

// enqueue enqueues the tasks, all to die: 4 fixable, 1 hopeless and 2 of
// an unknown type.
func (f *deadFixture) enqueue(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	var never string
	f.marker, never = filepath.Join(dir, "ok"), filepath.Join(dir, "never")
	flags := []string{"--queue", "dq", "--max-attempts", "2"}
	for range 4 {
		f.fixable = append(f.fixable, enqueueExec(t, f.env, flags, "sh", "-c", `test -f "$0"`, f.marker))
	}
	f.hopeless = enqueueExec(t, f.env, flags, "sh", "-c", `test -f "$0"`, never)
	for range 2 {
		code, out, errs := run(t, nil, f.env, "enqueue", "no-such-type", "--queue", "dq", "--max-attempts", "1", "--record", "--payload", "x")
		if code != 0 {
			t.Fatalf("enqueue: exit %d: %s", code, errs)
		}
		f.unknown = append(f.unknown, strings.TrimSpace(out))
	}
	f.all = slices.Concat(f.fixable, []string{f.hopeless}, f.unknown)
	slices.Sort(f.all)
}

// checkList checks what "forq dead ls" and "forq dead show" say of the
// dead letters ds.
func (f *deadFixture) checkList(t *testing.T, ds []admin.DeadLetter) {
	t.Helper()
	for _, d := range ds {
		switch {
		case d.Queue != "dq" || d.Error == "" || d.Time.IsZero():
			t.Errorf("dead letter %+v: want queue dq, an error, a time", d)
		case d.Type == forq.TypeExec && d.Attempts != 2:
			t.Errorf("dead letter %s: %d attempts, want 2", d.ID, d.Attempts)
		case d.Type != forq.TypeExec && d.Type != "no-such-type":
			t.Errorf("dead letter %s: type %q", d.ID, d.Type)
		}
	}
	if ds := deadLetters(t, f.env, "--queue", "other"); len(ds) != 0 {
		t.Errorf("dead ls --queue other lists %d letters, want none", len(ds))
	}
	code, out, _ := run(t, nil, f.env, "dead", "ls")
	if code != 0 || !strings.Contains(out, "SEQ") || !strings.Contains(out, f.fixable[0]) {
		t.Errorf("dead ls: exit %d:\n%s", code, out)
	}

	code, out, errs := run(t, nil, f.env, "dead", "show", f.fixable[0])
	for _, want := range []string{"id:        " + f.fixable[0], "attempts:  2", "error:     ", "exit", "Forq-Type: exec", "payload ("} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("dead show: exit %d, %q (stderr %q); want it to contain %q", code, out, errs, want)
		}
	}
}

// checkBadInput checks that unknown IDs and bad flags are refused, and
// that nothing is retried then.
func (f *deadFixture) checkBadInput(t *testing.T) {
	t.Helper()
	code, _, errs := run(t, nil, f.env, "dead", "show", "no-such-task")
	if code != 1 || !strings.Contains(errs, "no-such-task") {
		t.Errorf("dead show of an unknown ID: exit %d, %q; want 1 naming it", code, errs)
	}
	code, _, errs = run(t, nil, f.env, "dead", "retry", f.fixable[0], "no-such-task")
	if code != 1 || !strings.Contains(errs, "no-such-task") || len(deadLetters(t, f.env)) != len(f.all) {
		t.Errorf("dead retry with an unknown ID: exit %d, %q; want 1 naming it, and nothing retried", code, errs)
	}
	for _, args := range [][]string{{"dead", "retry"}, {"dead", "purge", "--all", "--queue", "dq"}, {"dead", "retry", "--queue", "bad.queue"}} {
		if code, _, errs := run(t, nil, f.env, args...); code != 2 {
			t.Errorf("forq %v: exit %d (%s), want 2", args, code, errs)
		}
	}
}

// retry lets the fixable tasks succeed and retries them (the hopeless one
// too) by ID and by sequence number: they succeed after 1 attempt, and the
// hopeless one dies again.
func (f *deadFixture) retry(t *testing.T, ds []admin.DeadLetter) {
	t.Helper()
	if err := os.WriteFile(f.marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// One more dies just now, with the marker there but its attempts
	// used up by a command that fails; the retry then comes inside the
	// duplicate window of its enqueue.
	fresh := enqueueExec(t, f.env, []string{"--queue", "dq", "--max-attempts", "1"}, "sh", "-c", `test -f "$0.again" || { touch "$0.again"; exit 1; }`, f.marker)
	eventually(t, 20*time.Second, func() bool { return slices.Contains(deadIDs(deadLetters(t, f.env)), fresh) }, "task %s was not dead-lettered", fresh)
	fixable := append(slices.Clip(f.fixable), fresh)
	var hopelessSeq string
	for _, d := range ds {
		if d.ID == f.hopeless {
			hopelessSeq = strconv.FormatUint(d.Seq, 10)
		}
	}
	began := time.Now()
	code, out, errs := run(t, nil, f.env, append([]string{"dead", "retry", hopelessSeq}, fixable...)...)
	if code != 0 {
		t.Fatalf("dead retry: exit %d: %s", code, errs)
	}
	for _, id := range append([]string{f.hopeless}, fixable...) {
		if !strings.Contains(out, "retried "+id) {
			t.Errorf("dead retry did not report %s:\n%s", id, out)
		}
	}
	took := time.Since(began)
	t.Logf("retry took %s: %s", took.Round(time.Millisecond), strings.TrimSpace(errs))
	eventually(t, 20*time.Second, func() bool {
		return countState(results(t, f.js, fixable), forq.StateSucceeded) == len(fixable)
	}, "retried tasks did not succeed: %v", results(t, f.js, fixable))
	for id, r := range results(t, f.js, fixable) {
		if r.Attempts != 1 {
			t.Errorf("retried task %s succeeded after %d attempts, want 1 (attempts reset)", id, r.Attempts)
		}
	}
	// The hopeless one dies again: a new dead letter, not a lost task.
	eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, f.env)) == 3 }, "dead letters after retry: %v, want 3", deadIDs(deadLetters(t, f.env)))
	want := slices.Sorted(slices.Values(append([]string{f.hopeless}, f.unknown...)))
	if got := deadIDs(deadLetters(t, f.env)); !slices.Equal(got, want) {
		t.Errorf("dead letters after retry: %v, want %v", got, want)
	}
	if r := results(t, f.js, []string{f.hopeless})[f.hopeless]; r.State != forq.StateDead || r.Attempts != 2 {
		t.Errorf("hopeless task after retry: %+v, want dead after 2 attempts", r)
	}
	if n := streamMsgs(t, f.js, forq.StreamTasks, wire.TaskSubject("dq")); n != 0 {
		t.Errorf("%d tasks left in the queue", n)
	}
}

// purge purges the dead letters left, by ID and by queue.
func (f *deadFixture) purge(t *testing.T) {
	t.Helper()
	code, out, errs := run(t, nil, f.env, "dead", "purge", f.hopeless)
	if code != 0 || !strings.Contains(out, "purged 1 dead letter") {
		t.Errorf("dead purge ID: exit %d, %q, %q", code, out, errs)
	}
	code, out, errs = run(t, nil, f.env, "dead", "purge", "--queue", "dq")
	if code != 0 || !strings.Contains(out, "purged 2 dead letter") {
		t.Errorf("dead purge --queue: exit %d, %q, %q", code, out, errs)
	}
	if n := streamMsgs(t, f.js, forq.StreamDead, ""); n != 0 {
		t.Errorf("%d dead letters left after purge", n)
	}
	code, out, _ = run(t, nil, f.env, "dead", "purge", "--all")
	if code != 0 || !strings.Contains(out, "no dead letters") {
		t.Errorf("dead purge --all of nothing: exit %d, %q", code, out)
	}
}
