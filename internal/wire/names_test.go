package wire

import (
	"testing"

	"github.com/forqhq/forq"
)

// TestLevelConsumerNamesAreNoQueues: the consumer of a queue's level other
// than normal is never another queue's, for forq.ValidateQueue rejects
// every name LevelConsumerName makes for one; and ParseConsumerName takes
// every name apart again.
func TestLevelConsumerNamesAreNoQueues(t *testing.T) {
	for _, q := range []string{"default", "q", "a-b_c", "x--y"} {
		for _, p := range forq.Priorities {
			name := LevelConsumerName(q, p)
			if err := forq.ValidateQueue(name); (err == nil) != (p == forq.PriorityNormal) {
				t.Errorf("LevelConsumerName(%q, %s) = %q: ValidateQueue says %v", q, p, name, err)
			}
			if gq, gp := ParseConsumerName(name); gq != q || gp != p {
				t.Errorf("ParseConsumerName(%q) = %q, %s; want %q, %s", name, gq, gp, q, p)
			}
		}
	}
}

func TestSubjects(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{TaskSubject("q"), "forq.tasks.q"},
		{LevelSubject("q", forq.PriorityNormal), "forq.tasks.q"},
		{LevelSubject("q", forq.PriorityHigh), "forq.tasks.q.high"},
		{LevelSubject("q", forq.PriorityLow), "forq.tasks.q.low"},
		{ConsumerName("q"), "q"},
		{LevelConsumerName("q", forq.PriorityHigh), "q--high"},
		{LevelConsumerName("q", forq.PriorityLow), "q--low"},
		{DeadSubject("q"), "forq.dead.q"},
		{ScheduleSubject("q", "id-1"), "forq.schedule.q.id-1"},
		{ScheduleFilter("id-1"), "forq.schedule.*.id-1"},
		{PeriodicSubject("nightly"), "forq.periodic.nightly"},
		{PeriodicName("forq.periodic.nightly"), "nightly"},
		{RunningSubject("q"), "forq.running.q"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// A task subject read from the broker is parsed without a panic; one of a
// valid queue is the subject LevelSubject gives for what it parses to.
func FuzzParseTaskSubject(f *testing.F) {
	for _, s := range []string{"forq.tasks.default", "forq.tasks.q.high", "forq.tasks.q.low", "forq.tasks.q.medium",
		"forq.tasks.", "forq.tasks", "forq.dead.q", "forq.tasks.a.b.c", "forq.tasks.q--high", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		q, p, ok := ParseTaskSubject(subject)
		if !ok {
			return
		}
		if !p.Valid() {
			t.Fatalf("%q parses to priority %d", subject, p)
		}
		if forq.ValidateQueue(q) == nil && LevelSubject(q, p) != subject {
			t.Fatalf("%q parses to queue %q, priority %s, whose subject is %q", subject, q, p, LevelSubject(q, p))
		}
	})
}
