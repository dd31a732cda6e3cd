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
	"github.com/forqhq/forq/producer"
)

// deadLetters runs "forq dead ls --json" and decodes it.
func deadLetters(t *testing.T, env []string, args ...string) []producer.DeadLetter {
	t.Helper()
	code, out, errs := run(t, nil, env, append([]string{"dead", "ls", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("forq dead ls: exit %d: %s", code, errs)
	}
	var ds []producer.DeadLetter
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("forq dead ls --json: %v: %q", err, out)
	}
	return ds
}

func deadIDs(ds []producer.DeadLetter) []string {
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
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	start(t, "forq", env, "work", "--queue", "dq", "--allow-exec", "--concurrency", "8", "--retry-base", "50ms")

	dir := t.TempDir()
	marker, never := filepath.Join(dir, "ok"), filepath.Join(dir, "never")
	flags := []string{"--queue", "dq", "--max-attempts", "2"}
	var fixable []string
	for range 4 {
		fixable = append(fixable, enqueueExec(t, env, flags, "sh", "-c", `test -f "$0"`, marker))
	}
	hopeless := enqueueExec(t, env, flags, "sh", "-c", `test -f "$0"`, never)
	var unknown []string
	for range 2 {
		code, out, errs := run(t, nil, env, "enqueue", "no-such-type", "--queue", "dq", "--max-attempts", "1", "--record", "--payload", "x")
		if code != 0 {
			t.Fatalf("enqueue: exit %d: %s", code, errs)
		}
		unknown = append(unknown, strings.TrimSpace(out))
	}
	all := slices.Concat(fixable, []string{hopeless}, unknown)
	slices.Sort(all)

	eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, env)) == len(all) }, "dead letters: %v, want %d", deadIDs(deadLetters(t, env)), len(all))
	ds := deadLetters(t, env, "--queue", "dq")
	if got := deadIDs(ds); !slices.Equal(got, all) {
		t.Fatalf("dead ls lists %v, want %v", got, all)
	}
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
	if ds := deadLetters(t, env, "--queue", "other"); len(ds) != 0 {
		t.Errorf("dead ls --queue other lists %d letters, want none", len(ds))
	}
	code, out, _ := run(t, nil, env, "dead", "ls")
	if code != 0 || !strings.Contains(out, "SEQ") || !strings.Contains(out, fixable[0]) {
		t.Errorf("dead ls: exit %d:\n%s", code, out)
	}

	code, out, errs := run(t, nil, env, "dead", "show", fixable[0])
	for _, want := range []string{"id:        " + fixable[0], "attempts:  2", "error:     ", "exit", "Forq-Type: exec", "payload ("} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("dead show: exit %d, %q (stderr %q); want it to contain %q", code, out, errs, want)
		}
	}
	code, _, errs = run(t, nil, env, "dead", "show", "no-such-task")
	if code != 1 || !strings.Contains(errs, "no-such-task") {
		t.Errorf("dead show of an unknown ID: exit %d, %q; want 1 naming it", code, errs)
	}
	code, _, errs = run(t, nil, env, "dead", "retry", fixable[0], "no-such-task")
	if code != 1 || !strings.Contains(errs, "no-such-task") || len(deadLetters(t, env)) != len(all) {
		t.Errorf("dead retry with an unknown ID: exit %d, %q; want 1 naming it, and nothing retried", code, errs)
	}
	for _, args := range [][]string{{"dead", "retry"}, {"dead", "purge", "--all", "--queue", "dq"}, {"dead", "retry", "--queue", "bad.queue"}} {
		if code, _, errs := run(t, nil, env, args...); code != 2 {
			t.Errorf("forq %v: exit %d (%s), want 2", args, code, errs)
		}
	}

	// Now the command can succeed: retry them (the hopeless one too) by ID
	// and by sequence number.
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// One more dies just now, with the marker there but its attempts
	// used up by a command that fails; the retry then comes inside the
	// duplicate window of its enqueue.
	fresh := enqueueExec(t, env, []string{"--queue", "dq", "--max-attempts", "1"}, "sh", "-c", `test -f "$0.again" || { touch "$0.again"; exit 1; }`, marker)
	eventually(t, 20*time.Second, func() bool { return slices.Contains(deadIDs(deadLetters(t, env)), fresh) }, "task %s was not dead-lettered", fresh)
	fixable = append(fixable, fresh)
	var hopelessSeq string
	for _, d := range ds {
		if d.ID == hopeless {
			hopelessSeq = strconv.FormatUint(d.Seq, 10)
		}
	}
	began := time.Now()
	code, out, errs = run(t, nil, env, append([]string{"dead", "retry", hopelessSeq}, fixable...)...)
	if code != 0 {
		t.Fatalf("dead retry: exit %d: %s", code, errs)
	}
	for _, id := range append([]string{hopeless}, fixable...) {
		if !strings.Contains(out, "retried "+id) {
			t.Errorf("dead retry did not report %s:\n%s", id, out)
		}
	}
	took := time.Since(began)
	t.Logf("retry took %s: %s", took.Round(time.Millisecond), strings.TrimSpace(errs))
	eventually(t, 20*time.Second, func() bool {
		return countState(results(t, js, fixable), forq.StateSucceeded) == len(fixable)
	}, "retried tasks did not succeed: %v", results(t, js, fixable))
	for id, r := range results(t, js, fixable) {
		if r.Attempts != 1 {
			t.Errorf("retried task %s succeeded after %d attempts, want 1 (attempts reset)", id, r.Attempts)
		}
	}
	// The hopeless one dies again: a new dead letter, not a lost task.
	eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, env)) == 3 }, "dead letters after retry: %v, want 3", deadIDs(deadLetters(t, env)))
	want := slices.Sorted(slices.Values(append([]string{hopeless}, unknown...)))
	if got := deadIDs(deadLetters(t, env)); !slices.Equal(got, want) {
		t.Errorf("dead letters after retry: %v, want %v", got, want)
	}
	if r := results(t, js, []string{hopeless})[hopeless]; r.State != forq.StateDead || r.Attempts != 2 {
		t.Errorf("hopeless task after retry: %+v, want dead after 2 attempts", r)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, forq.TaskSubject("dq")); n != 0 {
		t.Errorf("%d tasks left in the queue", n)
	}

	code, out, errs = run(t, nil, env, "dead", "purge", hopeless)
	if code != 0 || !strings.Contains(out, "purged 1 dead letter") {
		t.Errorf("dead purge ID: exit %d, %q, %q", code, out, errs)
	}
	code, out, errs = run(t, nil, env, "dead", "purge", "--queue", "dq")
	if code != 0 || !strings.Contains(out, "purged 2 dead letter") {
		t.Errorf("dead purge --queue: exit %d, %q, %q", code, out, errs)
	}
	if n := streamMsgs(t, js, forq.StreamDead, ""); n != 0 {
		t.Errorf("%d dead letters left after purge", n)
	}
	code, out, _ = run(t, nil, env, "dead", "purge", "--all")
	if code != 0 || !strings.Contains(out, "no dead letters") {
		t.Errorf("dead purge --all of nothing: exit %d, %q", code, out)
	}
}
