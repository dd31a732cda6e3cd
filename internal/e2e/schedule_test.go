package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Delayed tasks are started by a worker no earlier than they are due and
// within a second after, by the broker's clock. The workers run on the
// broker's host, so their started_at is on the broker's clock.
const schedLate = time.Second

// schedEnqueue runs "forq enqueue" and returns the task ID it printed.
func schedEnqueue(t *testing.T, env []string, args ...string) string {
	t.Helper()
	code, out, errs := run(t, nil, env, append([]string{"enqueue"}, args...)...)
	if code != 0 {
		t.Fatalf("enqueue %v: exit %d: %s", args, code, errs)
	}
	return strings.TrimSpace(out)
}

// schedStored returns when the broker stored the schedule of delayed task
// id, by the broker's clock.
func schedStored(t *testing.T, js jetstream.JetStream, queue, id string) time.Time {
	t.Helper()
	s, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(t.Context(), wire.ScheduleSubject(queue, id))
	if err != nil {
		t.Fatalf("schedule of %s: %v", id, err)
	}
	if m.Header.Get("Nats-Schedule") == "" || m.Header.Get("Forq-Id") != id {
		t.Fatalf("schedule of %s has headers %v", id, m.Header)
	}
	return m.Time
}

// schedDue returns when delayed task id is due by its record, scheduled_at
// (the producer's reckoning of the broker's clock when it enqueued, plus
// the delay), after checking that reckoning: the enqueue began, by the
// broker's clock, no earlier than before (read on the broker's host before
// enqueueing) and no later than the broker stored the task's schedule.
func schedDue(t *testing.T, js jetstream.JetStream, id string, before time.Time, delay time.Duration) time.Time {
	t.Helper()
	r := schedResult(t, js, id)
	stored := schedStored(t, js, "default", id)
	began := r.ScheduledAt.Add(-delay)
	const slack = 2 * time.Millisecond // the clock probe's error
	if r.State != forq.StateQueued || began.Before(before.Add(-slack)) || began.After(stored.Add(slack)) {
		t.Fatalf("delayed task %s: record %+v: it began at %s by the broker's clock, want between %s and its storage at %s",
			id, r, began.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), stored.Format(time.RFC3339Nano))
	}
	return r.ScheduledAt
}

func schedResult(t *testing.T, js jetstream.JetStream, id string) forq.Result {
	t.Helper()
	return results(t, js, []string{id})[id]
}

func schedWaitState(t *testing.T, js jetstream.JetStream, id string, s forq.State, d time.Duration) forq.Result {
	t.Helper()
	var r forq.Result
	eventually(t, d, func() bool { r = schedResult(t, js, id); return r.State == s }, "task %s is %q, want %q", id, r.State, s)
	return r
}

func schedCheckStart(t *testing.T, what string, r forq.Result, due time.Time) {
	t.Helper()
	if r.ID == "" || r.StartedAt.IsZero() {
		t.Fatalf("%s: no start recorded: %+v", what, r)
	}
	if late := r.StartedAt.Sub(due); late < 0 || late > schedLate {
		t.Errorf("%s: started at %s, %s after it was due (%s); want within [0, %s]",
			what, r.StartedAt.Format(time.RFC3339Nano), late, due.Format(time.RFC3339Nano), schedLate)
	} else {
		t.Logf("%s: started %s after it was due", what, late)
	}
}

// forq enqueue --in and --at: the task waits in the broker, starts when due
// and keeps its ID; a canceled one never runs; one that fails is
// dead-lettered like any task.
func TestDelayedTasksStartOnTime(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	start(t, "forq", env, "pool", "-n", "2")

	before := time.Now()
	in := schedEnqueue(t, env, "echo", "--payload", "in", "--in", "2s", "--record")
	inDue := schedDue(t, js, in, before, 2*time.Second)
	at := time.Now().Add(3 * time.Second).Truncate(time.Second)
	atID := schedEnqueue(t, env, "echo", "--payload", "at", "--at", at.UTC().Format(time.RFC3339), "--record")
	canceled := schedEnqueue(t, env, "echo", "--payload", "canceled", "--in", "2s", "--record")
	dead := schedEnqueue(t, env, "no-such-type", "--in", "1s", "--max-attempts", "1")

	if n := streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject("default")); n != 0 {
		t.Errorf("%d tasks in the queue before any is due, want 0", n)
	}
	if code, _, errs := run(t, nil, env, "cancel", canceled); code != 0 {
		t.Fatalf("cancel: exit %d: %s", code, errs)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, wire.ScheduleFilter(canceled)); n != 0 {
		t.Errorf("the canceled task's schedule is still there")
	}

	schedCheckStart(t, "--in 2s", schedWaitState(t, js, in, forq.StateSucceeded, 10*time.Second), inDue)
	got := schedWaitState(t, js, atID, forq.StateSucceeded, 10*time.Second)
	schedCheckStart(t, "--at", got, at)
	if string(got.Result) != "at" {
		t.Errorf("--at task's result %q, want its payload", got.Result)
	}
	schedWaitState(t, js, dead, forq.StateDead, 10*time.Second)
	if n := streamMsgs(t, js, forq.StreamDead, wire.DeadSubject("default")); n != 1 {
		t.Errorf("%d dead letters, want the failed delayed task", n)
	}

	time.Sleep(time.Second) // the canceled one was due a while ago
	if r := schedResult(t, js, canceled); r.State != forq.StateCanceled || !r.StartedAt.IsZero() {
		t.Errorf("canceled delayed task: %+v, want canceled and never started", r)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, ""); n != 0 {
		t.Errorf("%d messages left in %s, want 0", n, forq.StreamTasks)
	}

	// Bad flags are usage errors.
	for _, args := range [][]string{
		{"echo", "--in", "-1s"},
		{"echo", "--at", "tomorrow"},
		{"echo", "--in", "1s", "--at", "2026-12-01T09:00:00Z"},
	} {
		if code, _, errs := run(t, nil, env, append([]string{"enqueue"}, args...)...); code != 2 {
			t.Errorf("enqueue %v: exit %d, want 2; stderr %s", args, code, errs)
		}
	}
}

// A delayed task survives a restart of the broker between its enqueue and
// its time, killed or stopped, and still starts on time.
func TestDelayedTaskSurvivesBrokerRestart(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			b := startBroker(t, "", 0)
			env := []string{"FORQ_URL=" + b.url}
			before := time.Now()
			id := schedEnqueue(t, env, "echo", "--in", "5s", "--record")
			due := schedDue(t, b.js(t), id, before, 5*time.Second)
			b.signal(sig)
			b.wait(20 * time.Second)
			b = startBroker(t, b.dir, b.port)
			if time.Until(due) < time.Second {
				t.Skipf("the broker took too long to restart; the task is due in %s", time.Until(due))
			}
			start(t, "forq", env, "work")
			js := b.js(t)
			schedCheckStart(t, "after a broker restart", schedWaitState(t, js, id, forq.StateSucceeded, 15*time.Second), due)
		})
	}
}

// A producer whose clock is off still gets the delay it asked for: the
// delay is kept by the broker's clock.
func TestDelaySkewedProducerClock(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	nc, err := nats.Connect(b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js := b.js(t)
	start(t, "forq", env, "work", "--concurrency", "2")
	for _, skew := range []time.Duration{time.Hour, -time.Hour} {
		p, err := producer.New(t.Context(), nc, producer.Config{Clock: func() time.Time { return time.Now().Add(skew) }})
		if err != nil {
			t.Fatal(err)
		}
		if bt, err := p.BrokerTime(t.Context()); err != nil || time.Until(bt).Abs() > 50*time.Millisecond {
			t.Errorf("skew %s: broker time %s (err %v), want about now, %s", skew, bt, err, time.Now())
		}
		asked := time.Now() // the broker's clock: the test runs on its host
		info, err := p.Enqueue(t.Context(), forq.Task{Type: "echo"}, producer.WithDelay(2*time.Second), producer.WithRecord())
		if err != nil {
			t.Fatal(err)
		}
		due := schedDue(t, js, info.ID, asked, 2*time.Second)
		schedCheckStart(t, "producer clock "+skew.String(), schedWaitState(t, js, info.ID, forq.StateSucceeded, 10*time.Second), due)
	}
}

// A FORQ_TASKS stream declared by an older forq, without schedules, gets
// them added; nothing it had is removed.
func TestDelayUpgradesOldStream(t *testing.T) {
	b := startBroker(t, "", 0)
	js := b.js(t)
	old := jetstream.StreamConfig{
		Name: forq.StreamTasks, Subjects: []string{forq.SubjectTasksPrefix + ">", "legacy.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Duplicates: time.Minute, AllowMsgTTL: true,
	}
	// The broker declares forq's streams on start: put an old one instead.
	eventually(t, 10*time.Second, func() bool { return strings.Contains(b.stderr(), "stop with Ctrl-C") }, "broker did not declare its streams")
	if err := js.DeleteStream(t.Context(), forq.StreamTasks); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), old); err != nil {
		t.Fatal(err)
	}
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "work")
	id := schedEnqueue(t, env, "echo", "--in", "1s", "--record")
	schedWaitState(t, js, id, forq.StateSucceeded, 10*time.Second)
	s, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if !cfg.AllowMsgSchedules || !slices.Contains(cfg.Subjects, "legacy.>") || cfg.Duplicates != time.Minute {
		t.Errorf("upgraded stream: %+v; want schedules added, its subjects and duplicate window kept", cfg)
	}
}

// schedRuns returns the start times of the tasks periodic schedules
// enqueued (ID seq-<n>), sorted.
func schedRuns(t *testing.T, js jetstream.JetStream) []time.Time {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for k := range keys.Keys() {
		if strings.HasPrefix(k, "seq-") {
			ids = append(ids, k)
		}
	}
	var out []time.Time
	for _, r := range results(t, js, ids) {
		if r.State == forq.StateSucceeded {
			out = append(out, r.StartedAt)
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// schedCheckTicks checks that runs are one per tick of 2s: spaced by at
// least 1.5s.
func schedCheckTicks(t *testing.T, what string, runs []time.Time) {
	t.Helper()
	for i := 1; i < len(runs); i++ {
		if d := runs[i].Sub(runs[i-1]); d < 1500*time.Millisecond {
			t.Errorf("%s: runs %d and %d started %s apart, want one per 2s tick; runs %v", what, i-1, i, d, runs)
		}
	}
}

// checkScheduleAdd checks how "forq schedule add" reads cron days of the
// week (7 is Sunday) and that it refuses bad names, intervals, crons and
// time zones with exit 2.
func checkScheduleAdd(t *testing.T, env []string) {
	t.Helper()
	// 7 is Sunday in most crons; the broker reads 0-6, so forq sends 0,
	// and the broker takes it.
	for cron, want := range map[string]string{"0 9 * * 7": "0 0 9 * * 0", "0 9 * * 5-7": "0 0 9 * * 0,5,6"} {
		code, out, errs := run(t, nil, env, "schedule", "add", "sunday", "--cron", cron, "echo")
		if code != 0 || !strings.Contains(out, "schedule sunday: "+want+" ") {
			t.Errorf("schedule add --cron %q: exit %d, %q %q; want 0 and %q", cron, code, out, errs, want)
		}
		t.Logf("--cron %q: %s", cron, strings.TrimSpace(out))
		if code, _, errs := run(t, nil, env, "schedule", "rm", "sunday"); code != 0 {
			t.Fatalf("schedule rm sunday: exit %d: %s", code, errs)
		}
	}
	for _, args := range [][]string{
		{"bad.name", "--every", "2s", "echo"},
		{"bad", "--every", "500ms", "echo"},
		{"bad", "--cron", "0 25 * * *", "echo"},
		{"bad", "--cron", "* * *", "echo"},
		{"bad", "--cron", "0 9 * * 1", "--tz", "Mars/Olympus", "echo"},
		{"bad", "--every", "2s", "--tz", "Europe/Paris", "echo"},
		{"bad", "echo"},
	} {
		if code, _, errs := run(t, nil, env, append([]string{"schedule", "add"}, args...)...); code != 2 {
			t.Errorf("schedule add %v: exit %d, want 2; stderr %s", args, code, errs)
		} else {
			t.Logf("schedule add %v: %s", args, strings.TrimSpace(errs))
		}
	}
}

// checkScheduleList checks "forq schedule ls" (and --json) of the two
// schedules of TestSchedulePeriodicOncePerTick.
func checkScheduleList(t *testing.T, env []string) {
	t.Helper()
	code, out, errs := run(t, nil, env, "schedule", "ls", "--json")
	if code != 0 {
		t.Fatalf("schedule ls: exit %d: %s", code, errs)
	}
	var ls []map[string]any
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatalf("schedule ls --json: %v: %s", err, out)
	}
	if len(ls) != 2 || ls[0]["name"] != "tick" || ls[0]["spec"] != "@every 2s" || ls[0]["queue"] != "default" || ls[0]["type"] != "echo" ||
		ls[1]["name"] != "weekly" || ls[1]["spec"] != "0 0 9 * * 1" || ls[1]["time_zone"] != "Europe/Paris" || ls[1]["queue"] != "reports" {
		t.Errorf("schedule ls --json: %s", out)
	}
	if _, out, _ := run(t, nil, env, "schedule", "ls"); !strings.Contains(out, "tick") || !strings.Contains(out, "@every 2s") {
		t.Errorf("schedule ls: %s", out)
	}
}

// forq schedule add --every 2s with 3 worker processes up: one run per
// tick, across a broker restart; ls lists it, rm stops it.
func TestSchedulePeriodicOncePerTick(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	pool := start(t, "forq", env, "--log-level", "debug", "pool", "-n", "3")
	eventually(t, 10*time.Second, func() bool { return len(childPIDs(pool.cmd.Process.Pid)) == 3 }, "pool has not 3 children")

	code, out, errs := run(t, nil, env, "schedule", "add", "tick", "--every", "2s", "echo", "--payload", "tock", "--record")
	if code != 0 {
		t.Fatalf("schedule add: exit %d: %s", code, errs)
	}
	added := time.Now()
	t.Log(strings.TrimSpace(out))
	if code, _, errs := run(t, nil, env, "schedule", "add", "tick", "--every", "3s", "echo"); code != 2 || !strings.Contains(errs, "exists") {
		t.Errorf("second schedule add of one name: exit %d, %q; want 2 and 'exists'", code, errs)
	}
	if code, _, errs := run(t, nil, env, "schedule", "add", "weekly", "--cron", "0 9 * * 1", "--tz", "Europe/Paris", "-q", "reports", "echo"); code != 0 {
		t.Fatalf("schedule add --cron: exit %d: %s", code, errs)
	}
	checkScheduleAdd(t, env)
	checkScheduleList(t, env)

	time.Sleep(7*time.Second - time.Since(added))
	runs := schedRuns(t, js)
	if len(runs) < 3 || len(runs) > 4 {
		t.Errorf("%d runs in 7s of a 2s schedule, want 3 or 4: %v", len(runs), runs)
	}
	schedCheckTicks(t, "3 workers", runs)
	_, pids := handled(pool)
	t.Logf("runs %v by worker pids %v", runs, pids)

	// A broker restart: the schedule is still there and keeps ticking.
	b.signal(syscall.SIGTERM)
	b.wait(20 * time.Second)
	b = startBroker(t, b.dir, b.port)
	js = b.js(t)
	restarted := time.Now()
	before := len(runs)
	eventually(t, 10*time.Second, func() bool { return len(schedRuns(t, js)) >= before+2 }, "no ticks after the broker restart: %v", schedRuns(t, js))
	runs = schedRuns(t, js)
	schedCheckTicks(t, "after restart", runs)
	t.Logf("ticks resumed %s after the restart", runs[before].Sub(restarted))

	if code, _, errs := run(t, nil, env, "schedule", "rm", "tick"); code != 0 {
		t.Fatalf("schedule rm: exit %d: %s", code, errs)
	}
	removed := time.Now()
	if code, _, _ := run(t, nil, env, "schedule", "rm", "tick"); code != 1 {
		t.Errorf("schedule rm of a removed schedule: exit %d, want 1", code)
	}
	time.Sleep(3 * time.Second)
	for _, r := range schedRuns(t, js) {
		if r.After(removed.Add(500 * time.Millisecond)) {
			t.Errorf("a run started at %s, after the schedule was removed at %s", r, removed)
		}
	}
	if _, out, _ := run(t, nil, env, "schedule", "ls", "--json"); strings.Contains(out, `"tick"`) {
		t.Errorf("schedule ls after rm: %s", out)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject("default")); n != 0 {
		t.Errorf("%d tasks left queued", n)
	}
}

// The Go API: admin's AddSchedule, Schedule, Schedules, RemoveSchedule.
func TestScheduleAPI(t *testing.T) {
	b := startBroker(t, "", 0)
	nc, err := nats.Connect(b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	in, err := admin.New(ctx, nc, admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := admin.Schedule{Name: "nightly", Cron: "@daily", Task: forq.Task{Queue: "q1", Type: "report", Payload: []byte(`{"a":1}`), Timeout: time.Minute}}
	if err := in.AddSchedule(ctx, s, false); err != nil {
		t.Fatal(err)
	}
	if err := in.AddSchedule(ctx, s, false); !errors.Is(err, admin.ErrScheduleExists) {
		t.Errorf("second add: %v, want ErrScheduleExists", err)
	}
	s.Task.MaxAttempts = 5
	if err := in.AddSchedule(ctx, s, true); err != nil {
		t.Errorf("replace: %v", err)
	}
	got, err := in.Schedule(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if got.Cron != "@daily" || got.Task.Queue != "q1" || got.Task.Type != "report" || string(got.Task.Payload) != `{"a":1}` || got.Task.MaxAttempts != 5 || got.Task.Timeout != time.Minute {
		t.Errorf("schedule read back: %+v", got)
	}
	for _, bad := range []admin.Schedule{
		{Name: "x", Every: time.Second, Cron: "@daily", Task: forq.Task{Type: "t"}},
		{Name: "x", Cron: "@fortnightly", Task: forq.Task{Type: "t"}},
		{Name: "x", Every: time.Minute, Task: forq.Task{Type: "t", ID: "fixed"}},
	} {
		if err := in.AddSchedule(ctx, bad, false); !errors.Is(err, forq.ErrInvalidOption) && !errors.Is(err, forq.ErrInvalidTask) {
			t.Errorf("AddSchedule(%+v): %v, want an invalid option or task", bad, err)
		}
	}
	if _, err := p.Enqueue(ctx, forq.Task{Type: "t"}, producer.WithDelay(time.Second), producer.WithAt(time.Now())); !errors.Is(err, forq.ErrInvalidOption) {
		t.Errorf("WithDelay and WithAt: %v, want ErrInvalidOption", err)
	}
	if _, err := p.Enqueue(ctx, forq.Task{Type: "t"}, producer.WithDelay(-time.Second)); !errors.Is(err, forq.ErrInvalidOption) {
		t.Errorf("WithDelay(-1s): %v, want ErrInvalidOption", err)
	}
	ss, err := in.Schedules(ctx)
	if err != nil || len(ss) != 1 {
		t.Fatalf("Schedules: %v, %v", ss, err)
	}
	if err := in.RemoveSchedule(ctx, "nightly"); err != nil {
		t.Fatal(err)
	}
	if err := in.RemoveSchedule(ctx, "nightly"); !errors.Is(err, admin.ErrScheduleNotFound) {
		t.Errorf("second remove: %v, want ErrScheduleNotFound", err)
	}
}
