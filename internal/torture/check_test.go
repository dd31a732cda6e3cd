package torture

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// t0 is the start of every hand-made history.
var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func enq(id string, ms int) Event { return Event{Ev: EvEnqueued, ID: id, T: at(ms)} }

func start(id, run string, pid, ms int) Event {
	return Event{Ev: EvStart, ID: id, Run: run, PID: pid, Attempt: 1, T: at(ms)}
}

func end(id, run string, pid, ms int, outcome string) Event {
	return Event{Ev: EvEnd, ID: id, Run: run, PID: pid, Attempt: 1, T: at(ms), Outcome: outcome}
}

func fault(kind string, pid, ms int, pids ...int) Event {
	return Event{Ev: EvFault, Fault: kind, PID: pid, PIDs: pids, T: at(ms)}
}

func gone(pid, ms int) Event { return Event{Ev: EvGone, PID: pid, T: at(ms)} }

// writeHistory writes events to the files a run would: enqueues, each
// process's runs, faults.
func writeHistory(t *testing.T, events []Event) string {
	t.Helper()
	dir := t.TempDir()
	logs := map[string]*Log{}
	for _, e := range events {
		name := FileFaults
		switch e.Ev {
		case EvEnqueued:
			name = FileEnqueued
		case EvStart, EvEnd, EvWorker:
			name = RunsFile(e.PID, "n")
		}
		l := logs[name]
		if l == nil {
			var err error
			if l, err = OpenLog(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			logs[name] = l
		}
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range logs {
		l.Close()
	}
	return dir
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		events []Event
		// want: lost IDs, unexplained extra runs, concurrent pairs, and
		// the causes of the extra runs ("cause=n" sorted).
		lost        string
		unexplained int
		concurrent  int
		late        int
		explained   string
		ok          bool
	}{
		{
			name: "every task ran once",
			events: []Event{enq("a", 0), enq("b", 1),
				start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK),
				start("b", "r2", 11, 6), end("b", "r2", 11, 26, OutcomeOK)},
			ok: true,
		},
		{
			name:   "never ran",
			events: []Event{enq("a", 0), enq("b", 1), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK)},
			lost:   "b",
		},
		{
			name:   "started, killed, never again",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultKill, 10, 10), gone(10, 12)},
			lost:   "a",
		},
		{
			name:   "a canceled run is not a completed one",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 9, OutcomeCanceled)},
			lost:   "a",
		},
		{
			name:   "the acknowledging producer lied: a phantom enqueue is lost",
			events: []Event{enq("a", 0), enq("phantom", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK)},
			lost:   "phantom",
		},
		{
			name: "killed mid-run, run again elsewhere",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultKill, 10, 10), gone(10, 11),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK)},
			explained: "killed=1", ok: true,
		},
		{
			name: "killed after its end line, before the ack went: two completed runs",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK), fault(FaultKill, 10, 26),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK)},
			explained: "killed=1", ok: true,
		},
		{
			name: "two completed runs and no fault",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK),
				start("a", "r2", 11, 30), end("a", "r2", 11, 50, OutcomeOK)},
			unexplained: 1,
		},
		{
			name: "a kill long after the run ended explains nothing",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK), fault(FaultKill, 10, 20_000),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK)},
			unexplained: 1,
		},
		{
			name: "a kill after the second run started does not explain it",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), start("a", "r2", 11, 6), end("a", "r2", 11, 26, OutcomeOK),
				fault(FaultKill, 10, 500)},
			unexplained: 1, concurrent: 1,
		},
		{
			name: "a kill of another process explains nothing",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultKill, 12, 10), gone(10, 11),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK)},
			unexplained: 1,
		},
		{
			name: "a kill of a reused PID before the run started explains nothing",
			events: []Event{enq("a", 0), fault(FaultKill, 10, 1), start("a", "r1", 10, 5), gone(10, 11),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK)},
			unexplained: 1,
		},
		{
			name: "one kill, two more runs: one is unexplained",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultKill, 10, 10), gone(10, 11),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK),
				start("a", "r3", 12, 30_100), end("a", "r3", 12, 30_120, OutcomeOK)},
			explained: "killed=1", unexplained: 1,
		},
		{
			name: "three runs, each after a kill",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultKill, 10, 10),
				start("a", "r2", 11, 30_000), fault(FaultKill, 11, 30_005),
				start("a", "r3", 12, 60_000), end("a", "r3", 12, 60_020, OutcomeOK)},
			explained: "killed=2", ok: true,
		},
		{
			name: "the pool killed: its worker's canceled run ran again",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultPoolKill, 9, 10, 10, 11), end("a", "r1", 10, 12, OutcomeCanceled),
				gone(10, 15), start("a", "r2", 20, 2_000), end("a", "r2", 20, 2_020, OutcomeOK)},
			explained: "pool-killed=1", ok: true,
		},
		{
			name: "a worker of a killed pool starts a run after the kill and dies before its ack",
			events: []Event{enq("a", 0), fault(FaultPoolKill, 9, 10, 10), start("a", "r1", 10, 100), end("a", "r1", 10, 150, OutcomeOK),
				gone(10, 170), start("a", "r2", 20, 4_000), end("a", "r2", 20, 4_020, OutcomeOK)},
			explained: "pool-killed=1", ok: true,
		},
		{
			name: "a pool kill long after the run ended explains nothing",
			events: []Event{enq("a", 0), start("a", "r1", 10, 100), end("a", "r1", 10, 150, OutcomeOK), fault(FaultPoolKill, 9, 10_000, 10),
				gone(10, 10_100), start("a", "r2", 20, 14_000), end("a", "r2", 20, 14_020, OutcomeOK)},
			unexplained: 1,
		},
		{
			name: "run on through a broker restart, run again after it: explained, but the runs overlap",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultBrokerKill, 1, 100), fault(FaultBrokerUp, 2, 1_000),
				start("a", "r2", 11, 1_200), end("a", "r2", 11, 1_220, OutcomeOK), end("a", "r1", 10, 25_000, OutcomeOK)},
			explained: "broker-restart=1", concurrent: 1, late: 1,
		},
		{
			name: "ended just before a broker kill, its ack lost with it",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 90, OutcomeOK), fault(FaultBrokerKill, 1, 100), fault(FaultBrokerUp, 2, 1_000),
				start("a", "r2", 11, 1_200), end("a", "r2", 11, 1_220, OutcomeOK)},
			explained: "broker-restart=1", ok: true,
		},
		{
			name: "ended long before a broker restart: unexplained",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 90, OutcomeOK), fault(FaultBrokerKill, 1, 10_000), fault(FaultBrokerUp, 2, 11_000),
				start("a", "r2", 11, 11_200), end("a", "r2", 11, 11_220, OutcomeOK)},
			unexplained: 1,
		},
		{
			name: "frozen past the ack wait, resumed after the second run ended, and completed: late",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultStop, 10, 10),
				start("a", "r2", 11, 5_000), end("a", "r2", 11, 5_020, OutcomeOK),
				fault(FaultCont, 10, 8_000), end("a", "r1", 10, 8_010, OutcomeOK)},
			explained: "frozen=1", late: 1,
		},
		{
			name: "frozen past the ack wait, canceled on resuming: OK",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultStop, 10, 10),
				start("a", "r2", 11, 5_000), end("a", "r2", 11, 5_020, OutcomeOK),
				fault(FaultCont, 10, 8_000), end("a", "r1", 10, 8_001, OutcomeCanceled)},
			explained: "frozen=1", ok: true,
		},
		{
			name: "frozen, resumed while the second run still ran: concurrent while both ran",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultStop, 10, 10),
				start("a", "r2", 11, 5_000), fault(FaultCont, 10, 6_000), end("a", "r1", 10, 6_050, OutcomeCanceled),
				end("a", "r2", 11, 7_000, OutcomeOK)},
			explained: "frozen=1", concurrent: 1,
		},
		{
			name: "retried after an error",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 9, OutcomeError),
				start("a", "r2", 10, 1_000), end("a", "r2", 10, 1_020, OutcomeOK)},
			explained: "failed=1", ok: true,
		},
		{
			name: "a run with no end, its process seen gone after the second run started",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), fault(FaultPoolKill, 9, 10, 10),
				start("a", "r2", 11, 50), end("a", "r2", 11, 70, OutcomeOK), gone(10, 60)},
			explained: "pool-killed=1", concurrent: 1,
		},
		{
			name: "a run with no end and no known death is alive to the end",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5),
				start("a", "r2", 11, 30_000), end("a", "r2", 11, 30_020, OutcomeOK)},
			unexplained: 1, concurrent: 1,
		},
		{
			name: "a task that ran without an acknowledged enqueue is not lost",
			events: []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK),
				start("x", "r2", 10, 30), end("x", "r2", 10, 50, OutcomeOK)},
			ok: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Read(writeHistory(t, tt.events))
			if err != nil {
				t.Fatal(err)
			}
			rep := Check(h, CheckOptions{})
			var lost []string
			for _, l := range rep.Lost {
				lost = append(lost, l.ID)
			}
			if got := strings.Join(lost, ","); got != tt.lost {
				t.Errorf("lost: got %q, want %q", got, tt.lost)
			}
			if rep.Unexplained != tt.unexplained {
				t.Errorf("unexplained: got %d, want %d", rep.Unexplained, tt.unexplained)
			}
			if len(rep.Concurrent) != tt.concurrent {
				t.Errorf("concurrent: got %d, want %d", len(rep.Concurrent), tt.concurrent)
			}
			if len(rep.Late) != tt.late {
				t.Errorf("late: got %d, want %d", len(rep.Late), tt.late)
			}
			if got := explained(rep.Explained); got != tt.explained {
				t.Errorf("explained: got %q, want %q", got, tt.explained)
			}
			if rep.OK() != tt.ok {
				t.Errorf("OK: got %v, want %v", rep.OK(), tt.ok)
			}
			var b strings.Builder
			rep.WriteText(&b, 5)
			t.Logf("report:\n%s", b.String())
		})
	}
}

func explained(m map[string]int) string {
	var parts []string
	for _, c := range []string{CauseBrokerRestart, CauseFailed, CauseFrozen, CauseKilled, CausePoolKilled} {
		if m[c] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", c, m[c]))
		}
	}
	return strings.Join(parts, ",")
}

// TestReadTornLine: a process killed in the middle of its write leaves a
// last line with no newline; it is skipped, and counted.
func TestReadTornLine(t *testing.T) {
	dir := writeHistory(t, []Event{enq("a", 0), start("a", "r1", 10, 5), end("a", "r1", 10, 25, OutcomeOK)})
	f, err := os.OpenFile(filepath.Join(dir, RunsFile(10, "n")), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"ev":"start","t":"2025-01-01T12:00:01Z","id":"b","ru`); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	h, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.Torn != 1 || len(h.Runs) != 1 {
		t.Errorf("got %d torn lines and %d runs, want 1 and 1", h.Torn, len(h.Runs))
	}
	// A broken line that is not the last is an error, not silently skipped.
	if f, err = os.OpenFile(filepath.Join(dir, RunsFile(10, "n")), os.O_WRONLY|os.O_APPEND, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\n{}\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(dir); err == nil {
		t.Error("Read of a history with a broken line in the middle: got no error")
	}
}
