package e2e

import (
	"strings"
	"testing"
	"time"
)

// "forq record QUEUE": every task of the queue gets a record, without
// --record on each enqueue; --off stops it.
func TestQueueRecordsEveryTask(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	if code, out, errs := run(t, nil, env, "record", "kept"); code != 0 || !strings.Contains(out, "every task's state and result is recorded") {
		t.Fatalf("forq record: exit %d, %q %q", code, out, errs)
	}
	start(t, "forq", env, "work", "--queue", "kept")
	code, out, errs := run(t, nil, env, "enqueue", "echo", "--queue", "kept", "--payload", "remember me")
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	id := strings.TrimSpace(out)
	code, out, _ = run(t, nil, env, "result", "--wait", "--wait-timeout", "20s", id)
	if code != 0 || !strings.Contains(out, "state:     succeeded") || !strings.Contains(out, "result:    remember me") {
		t.Errorf("forq result of a task of a recorded queue: exit %d, %q", code, out)
	}
	if code, _, errs := run(t, nil, env, "record", "kept", "--off"); code != 0 {
		t.Fatalf("forq record --off: exit %d: %s", code, errs)
	}
	// Workers pick the change up when they next refresh their status.
	time.Sleep(3 * time.Second)
	_, out, _ = run(t, nil, env, "enqueue", "echo", "--queue", "kept", "--payload", "forget me")
	id = strings.TrimSpace(out)
	time.Sleep(time.Second)
	if code, _, errs := run(t, nil, env, "result", id); code != 1 || !strings.Contains(errs, "no result for task") {
		t.Errorf("forq result after --off: exit %d, %q; want no record", code, errs)
	}
	if code, _, errs := run(t, nil, env, "record", "bad.name"); code != 2 || !strings.Contains(errs, "invalid queue name") {
		t.Errorf("forq record bad.name: exit %d, %q", code, errs)
	}
}
