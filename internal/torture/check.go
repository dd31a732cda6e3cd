package torture

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// The causes Check gives for a task's second (third, ...) run.
const (
	CauseKilled        = "killed"         // an earlier run's worker was SIGKILLed while it ran, or before its ack could go
	CausePoolKilled    = "pool-killed"    // an earlier run's pool was SIGKILLed, which stops its workers
	CauseFrozen        = "frozen"         // an earlier run's worker was SIGSTOPped while it ran
	CauseBrokerRestart = "broker-restart" // the broker stopped while an earlier run was in flight
	CauseFailed        = "failed"         // an earlier run failed: a retry
	CauseUnexplained   = "unexplained"    // none of the above: a defect
)

// DefaultSlack is CheckOptions.Slack's default.
const DefaultSlack = 2 * time.Second

// CheckOptions tune Check. The zero value is ready to use.
type CheckOptions struct {
	// Slack is how long after a run's end a fault can still explain a
	// second run of its task: the worker acknowledges a task after its
	// handler returned, and a kill in between leaves it unacknowledged.
	// 0 means DefaultSlack.
	Slack time.Duration
}

// Report is what Check found.
type Report struct {
	// Enqueued is the number of tasks whose enqueue was acknowledged;
	// Completed how many of them completed a run.
	Enqueued  int `json:"enqueued"`
	Completed int `json:"completed"`
	// Runs counts every run started, of every task.
	Runs int `json:"runs"`
	// Unacknowledged counts tasks that ran although no acknowledged
	// enqueue names them (an enqueue that failed after the broker stored
	// it): not a fault, a task the producer should retry with its ID.
	Unacknowledged int `json:"unacknowledged"`
	// Lost are the acknowledged tasks that never completed a run.
	Lost []Lost `json:"lost"`
	// Duplicates are the tasks that started more than once.
	Duplicates []Duplicate `json:"duplicates"`
	// Explained counts the extra runs by cause (one of the Cause
	// constants but CauseUnexplained); Unexplained counts the others.
	Explained   map[string]int `json:"explained"`
	Unexplained int            `json:"unexplained"`
	// Concurrent are the pairs of runs of one task that overlapped.
	Concurrent []Overlap `json:"concurrent"`
	// Late are the runs that completed although another run of their
	// task had started meanwhile (while they were frozen, say): a worker
	// that lost its task went on with it.
	Late []TaskRun `json:"late"`
	// Faults counts the faults injected, by kind.
	Faults map[string]int `json:"faults"`
	// Torn counts history lines cut short by a kill (and skipped).
	Torn int `json:"torn_lines"`
}

// Lost is a task whose enqueue was acknowledged and that never completed.
type Lost struct {
	ID       string    `json:"id"`
	Enqueued time.Time `json:"enqueued"`
	// Starts counts its runs, none of them completed; LastOutcome is the
	// last one's outcome ("" when it has no end).
	Starts      int    `json:"starts"`
	LastOutcome string `json:"last_outcome,omitempty"`
	// Where says where the task was found after the run (Run fills it):
	// dead-lettered with a reason, or nowhere.
	Where string `json:"where,omitempty"`
}

// Duplicate is a task that started more than once.
type Duplicate struct {
	ID string `json:"id"`
	// Runs in the order they started.
	Runs []TaskRun `json:"runs"`
	// Causes has one entry per run after the first: why it ran again.
	Causes []string `json:"causes"`
	// Completed counts its completed runs.
	Completed int `json:"completed"`
}

// Unexplained reports whether a run of d has no cause.
func (d Duplicate) Unexplained() bool { return slices.Contains(d.Causes, CauseUnexplained) }

// Overlap is two runs of one task that were alive at once.
type Overlap struct {
	ID string `json:"id"`
	// A started first; Overlap is how long both were alive.
	A       TaskRun       `json:"a"`
	B       TaskRun       `json:"b"`
	Overlap time.Duration `json:"overlap_ns"`
	// Open is true when A has no end and its process was not seen to
	// die: it is taken as alive until the end of the history.
	Open bool `json:"open,omitempty"`
}

// OK reports whether the run kept every promise: nothing lost, every
// extra run explained by a fault, no two runs of one task at once, no
// run completed after its task went to another worker.
func (r *Report) OK() bool {
	return len(r.Lost) == 0 && r.Unexplained == 0 && len(r.Concurrent) == 0 && len(r.Late) == 0
}

// Check computes the report of history h.
func Check(h *History, o CheckOptions) *Report {
	if o.Slack <= 0 {
		o.Slack = DefaultSlack
	}
	rep := &Report{
		Enqueued: len(h.Enqueued), Runs: len(h.Runs), Torn: h.Torn,
		Lost: []Lost{}, Duplicates: []Duplicate{}, Concurrent: []Overlap{}, Late: []TaskRun{},
		Explained: map[string]int{}, Faults: map[string]int{},
	}
	for _, f := range h.Faults {
		if f.Fault != FaultBrokerUp && f.Fault != FaultCont {
			rep.Faults[f.Fault]++
		}
	}
	byTask := map[string][]TaskRun{}
	for _, r := range h.Runs {
		byTask[r.ID] = append(byTask[r.ID], r)
	}
	ids := make([]string, 0, len(byTask))
	for id := range byTask {
		ids = append(ids, id)
		if _, ok := h.Enqueued[id]; !ok {
			rep.Unacknowledged++
		}
	}
	sort.Strings(ids)
	c := checker{h: h, slack: o.Slack}
	for _, id := range ids {
		runs := byTask[id]
		sort.SliceStable(runs, func(i, j int) bool { return runs[i].Start.Before(runs[j].Start) })
		if len(runs) > 1 {
			d := Duplicate{ID: id, Runs: runs, Causes: c.explain(runs)}
			for _, r := range runs {
				if r.Completed() {
					d.Completed++
				}
			}
			for _, cause := range d.Causes {
				if cause == CauseUnexplained {
					rep.Unexplained++
				} else {
					rep.Explained[cause]++
				}
			}
			rep.Duplicates = append(rep.Duplicates, d)
			rep.Concurrent = append(rep.Concurrent, c.overlaps(id, runs)...)
			rep.Late = append(rep.Late, late(runs)...)
		}
	}
	enq := make([]string, 0, len(h.Enqueued))
	for id := range h.Enqueued {
		enq = append(enq, id)
	}
	sort.Strings(enq)
	for _, id := range enq {
		runs := byTask[id]
		if slices.ContainsFunc(runs, TaskRun.Completed) {
			rep.Completed++
			continue
		}
		l := Lost{ID: id, Enqueued: h.Enqueued[id].T, Starts: len(runs)}
		if len(runs) > 0 {
			l.LastOutcome = runs[len(runs)-1].Outcome
		}
		rep.Lost = append(rep.Lost, l)
	}
	return rep
}

type checker struct {
	h     *History
	slack time.Duration
}

// explain gives the cause of each run after the first. Each earlier run
// explains at most one later run: one fault, one redelivery.
func (c *checker) explain(runs []TaskRun) []string {
	used := make([]bool, len(runs))
	causes := make([]string, 0, len(runs)-1)
	for i := 1; i < len(runs); i++ {
		cause := CauseUnexplained
		for j := i - 1; j >= 0 && cause == CauseUnexplained; j-- {
			if used[j] {
				continue
			}
			if why := c.cause(runs[j], runs[i]); why != "" {
				cause, used[j] = why, true
			}
		}
		causes = append(causes, cause)
	}
	return causes
}

// cause says which fault made run r of a task follow its earlier run e,
// or "" if none did.
func (c *checker) cause(e, r TaskRun) string {
	for _, f := range c.h.Faults {
		if why := c.faultCause(f, e, r); why != "" {
			return why
		}
	}
	if e.Outcome == OutcomeError && !e.End.After(r.Start) {
		return CauseFailed
	}
	return ""
}

// faultCause says whether fault f made run r of a task follow its earlier
// run e, and how; "" if it did not.
func (c *checker) faultCause(f Event, e, r TaskRun) string {
	switch {
	case f.Fault == FaultKill && f.PID == e.PID && c.hits(f.T, e, r):
		return CauseKilled
	case f.Fault == FaultPoolKill && slices.Contains(f.PIDs, e.PID) && !f.T.After(r.Start):
		// The pool's workers hand back their tasks and die after it,
		// on their parent-death signal: the kill counts while e ran,
		// and so does the death of e's worker.
		if c.hits(f.T, e, r) || c.hits(c.goneAfter(e.PID, f.T), e, r) {
			return CausePoolKilled
		}
	case f.Fault == FaultStop && f.PID == e.PID && c.hits(f.T, e, r):
		return CauseFrozen
	case (f.Fault == FaultBrokerKill || f.Fault == FaultBrokerStop) && !r.Start.Before(f.T):
		up := c.brokerUp(f.T)
		if !e.Start.After(up) && (e.End.IsZero() || !e.End.Before(f.T.Add(-c.slack))) {
			return CauseBrokerRestart
		}
	}
	return ""
}

// hits reports whether something at t hit run e's process while it
// mattered: after e started, before the later run r started, and before
// e's ack was surely sent.
func (c *checker) hits(t time.Time, e, r TaskRun) bool {
	return !t.Before(e.Start) && !t.After(r.Start) && (e.End.IsZero() || !t.After(e.End.Add(c.slack)))
}

// goneAfter is when process pid was first seen gone at or after t; t
// itself if it never was.
func (c *checker) goneAfter(pid int, t time.Time) time.Time {
	for _, g := range c.h.Gone[pid] {
		if !g.Before(t) {
			return g
		}
	}
	return t
}

// brokerUp is when the broker was ready again after it went down at t:
// the end of the history if it never was.
func (c *checker) brokerUp(t time.Time) time.Time {
	for _, f := range c.h.Faults {
		if f.Fault == FaultBrokerUp && !f.T.Before(t) {
			return f.T
		}
	}
	return c.h.End
}

// death is when run r's process is known dead, for a run with no end:
// at its SIGKILL, or when it was seen gone. ok is false if neither is
// known.
func (c *checker) death(r TaskRun) (t time.Time, ok bool) {
	for _, g := range c.h.Gone[r.PID] {
		if !g.Before(r.Start) {
			t, ok = g, true
			break
		}
	}
	for _, f := range c.h.Faults {
		if f.Fault == FaultKill && f.PID == r.PID && !f.T.Before(r.Start) {
			if !ok || f.T.Before(t) {
				t, ok = f.T, true
			}
			break
		}
	}
	return t, ok
}

// until is when run r stopped being alive; open says it is not known.
func (c *checker) until(r TaskRun) (t time.Time, open bool) {
	if !r.End.IsZero() {
		return r.End, false
	}
	if t, ok := c.death(r); ok {
		return t, false
	}
	return c.h.End, true
}

// overlaps lists the pairs of runs (in start order) that were alive at
// once.
func (c *checker) overlaps(id string, runs []TaskRun) []Overlap {
	var out []Overlap
	for i := range runs {
		ei, open := c.until(runs[i])
		for j := i + 1; j < len(runs); j++ {
			if !runs[j].Start.Before(ei) {
				continue
			}
			ej, _ := c.until(runs[j])
			// Time either process spent stopped is not time both ran.
			from, to := runs[j].Start, minTime(ei, ej)
			live := to.Sub(from) - c.stopped(runs[i].PID, runs[j].PID, from, to)
			if live <= 0 {
				continue
			}
			out = append(out, Overlap{ID: id, A: runs[i], B: runs[j], Overlap: live, Open: open})
		}
	}
	return out
}

// stopped is how much of [from, to] process a or b spent SIGSTOPped.
func (c *checker) stopped(a, b int, from, to time.Time) time.Duration {
	var d time.Duration
	for i, f := range c.h.Faults {
		if f.Fault != FaultStop || (f.PID != a && f.PID != b) {
			continue
		}
		until := c.h.End
		for _, g := range c.h.Faults[i+1:] {
			if g.Fault == FaultCont && g.PID == f.PID {
				until = g.T
				break
			}
		}
		s, e := f.T, until
		if s.Before(from) {
			s = from
		}
		if e.After(to) {
			e = to
		}
		if e.After(s) {
			d += e.Sub(s)
		}
	}
	return min(d, to.Sub(from))
}

// late lists the runs that completed after another run of their task
// had started while they ran: a run that went on after its task was
// given to another worker (its lease lost) instead of being canceled.
func late(runs []TaskRun) []TaskRun {
	var out []TaskRun
	for i, a := range runs {
		if !a.Completed() {
			continue
		}
		for _, b := range runs[i+1:] {
			if b.Start.After(a.Start) && b.Start.Before(a.End) {
				out = append(out, a)
				break
			}
		}
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// WriteText writes the report for a person: the counts, then up to limit
// examples of each problem.
func (r *Report) WriteText(w io.Writer, limit int) {
	verdict := "OK: nothing lost, every extra run explained by a fault, no two runs of one task at once, none completed late"
	if !r.OK() {
		verdict = fmt.Sprintf("FAILED: %d lost, %d extra runs unexplained, %d concurrent runs of one task, %d completed after their task went to another worker",
			len(r.Lost), r.Unexplained, len(r.Concurrent), len(r.Late))
	}
	fmt.Fprintln(w, verdict)
	fmt.Fprintf(w, "  tasks acknowledged  %d\n  tasks completed     %d\n  runs started        %d\n", r.Enqueued, r.Completed, r.Runs)
	fmt.Fprintf(w, "  faults injected     %s\n", counts(r.Faults))
	extra := 0
	for _, n := range r.Explained {
		extra += n
	}
	fmt.Fprintf(w, "  tasks run again     %d (%d extra runs: %s; unexplained %d)\n", len(r.Duplicates), extra+r.Unexplained, counts(r.Explained), r.Unexplained)
	if r.Unacknowledged > 0 {
		fmt.Fprintf(w, "  ran unacknowledged  %d (enqueues that failed although the broker stored the task)\n", r.Unacknowledged)
	}
	if r.Torn > 0 {
		fmt.Fprintf(w, "  torn history lines  %d (cut short by a kill, skipped)\n", r.Torn)
	}
	for i, l := range r.Lost {
		if i == limit {
			fmt.Fprintf(w, "  ... and %d more lost\n", len(r.Lost)-limit)
			break
		}
		fmt.Fprintf(w, "  LOST %s: enqueued %s, runs started %d", l.ID, l.Enqueued.Format(time.TimeOnly+".000"), l.Starts)
		if l.LastOutcome != "" {
			fmt.Fprintf(w, ", last run %s", l.LastOutcome)
		}
		if l.Where != "" {
			fmt.Fprintf(w, "; %s", l.Where)
		}
		fmt.Fprintln(w)
	}
	n := 0
	for _, d := range r.Duplicates {
		if !d.Unexplained() {
			continue
		}
		if n == limit {
			fmt.Fprintln(w, "  ... and more unexplained")
			break
		}
		n++
		fmt.Fprintf(w, "  UNEXPLAINED %s ran %d times (%d completed):\n", d.ID, len(d.Runs), d.Completed)
		for i, run := range d.Runs {
			cause := "first"
			if i > 0 {
				cause = d.Causes[i-1]
			}
			fmt.Fprintf(w, "    %s\n", describe(run, cause))
		}
	}
	for i, l := range r.Late {
		if i == limit {
			fmt.Fprintf(w, "  ... and %d more late\n", len(r.Late)-limit)
			break
		}
		fmt.Fprintf(w, "  LATE %s: completed after another run of it started: %s\n", l.ID, describe(l, ""))
	}
	for i, o := range r.Concurrent {
		if i == limit {
			fmt.Fprintf(w, "  ... and %d more concurrent\n", len(r.Concurrent)-limit)
			break
		}
		open := ""
		if o.Open {
			open = " (the first has no end and its process was not seen to die)"
		}
		fmt.Fprintf(w, "  CONCURRENT %s: two runs alive at once for %s%s:\n    %s\n    %s\n", o.ID, o.Overlap.Round(time.Millisecond), open,
			describe(o.A, ""), describe(o.B, ""))
	}
}

func describe(r TaskRun, cause string) string {
	end := "no end"
	if !r.End.IsZero() {
		end = fmt.Sprintf("%s %s", r.Outcome, r.End.Format(time.TimeOnly+".000"))
	}
	s := fmt.Sprintf("pid %d attempt %d: start %s, %s", r.PID, r.Attempt, r.Start.Format(time.TimeOnly+".000"), end)
	if cause != "" {
		s += " [" + cause + "]"
	}
	return s
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
