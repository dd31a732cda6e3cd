package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
)

// A task not started before its deadline is dropped by the broker and
// reported as expired; it never runs.
func TestExpiredTasks(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	code, out, errs := run(t, nil, env, "enqueue", "echo", "--payload", "too late", "--expire-in", "1s", "--record")
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	id := strings.TrimSpace(out)
	js := b.js(t)
	eventually(t, 10*time.Second, func() bool { return streamMsgs(t, js, forq.StreamTasks, "") == 0 }, "the broker did not drop the expired task")
	start(t, "forq", env, "work")
	code, out, _ = run(t, nil, env, "result", id)
	if code != 0 || !strings.Contains(out, "state:     expired") || strings.Contains(out, "too late") {
		t.Errorf("forq result: exit %d, %q; want state expired and no result", code, out)
	}
	// --wait on a task that expires in the queue returns when it expires.
	code, _, errs = run(t, nil, env, "enqueue", "echo", "--queue", "nobody", "--expire-in", "1s", "--wait", "--wait-timeout", "20s")
	if code != 1 || !strings.Contains(errs, "expired") {
		t.Errorf("enqueue --wait of a task that expires: exit %d, %q; want 1, expired", code, errs)
	}
	if code, _, errs := run(t, nil, env, "enqueue", "echo", "--deadline", "yesterday"); code != 2 || !strings.Contains(errs, "is not an RFC 3339 time") {
		t.Errorf("bad --deadline: exit %d, %q", code, errs)
	}
}
