package torture

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The kinds of history events (Event.Ev).
const (
	EvEnqueued = "enqueued" // a task whose enqueue was acknowledged
	EvWorker   = "worker"   // a worker process registered the handlers
	EvStart    = "start"    // a handler started a run
	EvEnd      = "end"      // a handler ended a run (Outcome says how)
	EvFault    = "fault"    // a fault was injected (Fault says which)
	EvGone     = "gone"     // a worker process was seen gone (exited or a zombie)
)

// The faults an Injector injects (Event.Fault).
const (
	FaultKill       = "kill"        // SIGKILL of a worker process (PID)
	FaultStop       = "stop"        // SIGSTOP of a worker process (PID)
	FaultCont       = "cont"        // SIGCONT of a stopped worker process (PID)
	FaultPoolKill   = "pool-kill"   // SIGKILL of the pool (PID), with its workers (PIDs)
	FaultBrokerKill = "broker-kill" // SIGKILL of the broker (PID)
	FaultBrokerStop = "broker-stop" // SIGTERM of the broker (PID)
	FaultBrokerUp   = "broker-up"   // the broker is ready again after one of the two above
)

// The outcomes of a run (Event.Outcome of an "end" event).
const (
	OutcomeOK       = "ok"       // the work is done
	OutcomeCanceled = "canceled" // the handler's context was canceled first
	OutcomeError    = "error"    // the handler failed
)

// The history files in a history directory.
const (
	FileEnqueued = "enqueued.jsonl"
	FileFaults   = "faults.jsonl"
	runsPrefix   = "runs-"
	fileSuffix   = ".jsonl"
)

// RunsFile is the name of the history file of worker process pid, whose
// nonce tells it from an earlier process that had the same PID.
func RunsFile(pid int, nonce string) string {
	return runsPrefix + strconv.Itoa(pid) + "-" + nonce + fileSuffix
}

// Event is one line of a history file.
type Event struct {
	// Ev is the kind of event: EvEnqueued, EvWorker, EvStart, EvEnd,
	// EvFault or EvGone.
	Ev string `json:"ev"`
	// T is when it happened, by the clock of the process that wrote it
	// (one host: one clock).
	T time.Time `json:"t"`
	// ID is the task's.
	ID string `json:"id,omitempty"`
	// Phase of an enqueued task: PhaseCalm or PhaseFaults.
	Phase string `json:"phase,omitempty"`
	// Run identifies one run of a task: its start and end share it.
	Run string `json:"run,omitempty"`
	// PID is the worker process of a run, or the process a fault hit.
	PID int `json:"pid,omitempty"`
	// PIDs are the pool's workers at a pool kill.
	PIDs []int `json:"pids,omitempty"`
	// Attempt of a run, as the worker counted it.
	Attempt int `json:"attempt,omitempty"`
	// Outcome of an "end" event.
	Outcome string `json:"outcome,omitempty"`
	// Fault of a "fault" event.
	Fault string `json:"fault,omitempty"`
	// Err says why a run failed.
	Err string `json:"err,omitempty"`
}

// Log appends events to one history file. It is safe for concurrent use.
// Each event is one write(2) of one line to a file opened with O_APPEND,
// so several processes may append to one file, and a SIGKILL loses no
// event whose Append returned.
type Log struct {
	mu sync.Mutex
	f  *os.File
}

// OpenLog opens (creating it if needed) the history file at path for
// appending.
func OpenLog(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return &Log{f: f}, nil
}

// Append writes e as one line; a zero e.T is set to now.
func (l *Log) Append(e Event) error {
	if e.T.IsZero() {
		e.T = time.Now()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.f.Write(b); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// History is what a history directory holds.
type History struct {
	// Enqueued maps each acknowledged task to its enqueue event.
	Enqueued map[string]Event
	// Runs are all the runs, in no order.
	Runs []TaskRun
	// Faults are the fault events, in time order.
	Faults []Event
	// Gone maps a PID to the times it was seen gone, in order (a PID can
	// be reused by a later process).
	Gone map[int][]time.Time
	// Workers are the "worker" events.
	Workers []Event
	// End is the time of the last event.
	End time.Time
	// Torn counts lines skipped because a kill cut them short.
	Torn int
}

// TaskRun is one run of a task: a start event and, unless its process died
// first, an end event.
type TaskRun struct {
	ID      string    `json:"id"`
	Run     string    `json:"run"`
	PID     int       `json:"pid"`
	Attempt int       `json:"attempt"`
	Start   time.Time `json:"start"`
	// End and Outcome are zero when the run has no end event.
	End     time.Time `json:"end,omitzero"`
	Outcome string    `json:"outcome,omitempty"`
}

// Completed reports whether the run did its work.
func (r TaskRun) Completed() bool { return r.Outcome == OutcomeOK }

// Read reads every history file in dir.
func Read(dir string) (*History, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	h := &History{Enqueued: map[string]Event{}, Gone: map[int][]time.Time{}}
	runs := map[string]*TaskRun{}
	var order []string
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), fileSuffix) {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		err = readEvents(f, &h.Torn, func(ev Event) {
			if ev.T.After(h.End) {
				h.End = ev.T
			}
			switch ev.Ev {
			case EvEnqueued:
				if _, dup := h.Enqueued[ev.ID]; !dup {
					h.Enqueued[ev.ID] = ev
				}
			case EvStart, EvEnd:
				r := runs[ev.Run]
				if r == nil {
					r = &TaskRun{ID: ev.ID, Run: ev.Run, PID: ev.PID, Attempt: ev.Attempt}
					runs[ev.Run] = r
					order = append(order, ev.Run)
				}
				if ev.Ev == EvStart {
					r.Start = ev.T
				} else {
					r.End, r.Outcome = ev.T, ev.Outcome
				}
			case EvFault:
				h.Faults = append(h.Faults, ev)
			case EvGone:
				h.Gone[ev.PID] = append(h.Gone[ev.PID], ev.T)
			case EvWorker:
				h.Workers = append(h.Workers, ev)
			}
		})
		_ = f.Close() // read only: the read's error is the one that counts
		if err != nil {
			return nil, fmt.Errorf("history %s: %w", e.Name(), err)
		}
	}
	for _, id := range order {
		r := runs[id]
		if r.Start.IsZero() {
			r.Start = r.End // an end without its start: keep the run, as short as can be
		}
		h.Runs = append(h.Runs, *r)
	}
	sort.SliceStable(h.Faults, func(i, j int) bool { return h.Faults[i].T.Before(h.Faults[j].T) })
	for pid := range h.Gone {
		sort.Slice(h.Gone[pid], func(i, j int) bool { return h.Gone[pid][i].Before(h.Gone[pid][j]) })
	}
	return h, nil
}

// readEvents calls fn with each event of r. A line that does not parse is
// an error, except the last one of the file when it has no newline: a
// process killed in the middle of its write leaves that, and *torn counts
// it.
func readEvents(r io.Reader, torn *int, fn func(Event)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			complete := line[len(line)-1] == '\n'
			var ev Event
			if jerr := json.Unmarshal(bytes.TrimSpace(line), &ev); jerr != nil {
				if !complete {
					*torn++
					return nil
				}
				return fmt.Errorf("line %d: %w", n, jerr)
			}
			fn(ev)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// tail follows the files of a history directory as they grow, for a
// running Run to see what is done.
type tail struct {
	dir  string
	off  map[string]int64
	part map[string][]byte // a line not yet complete, by file
}

func newTail(dir string) *tail {
	return &tail{dir: dir, off: map[string]int64{}, part: map[string][]byte{}}
}

// poll calls fn with each complete line appended since the last poll.
func (t *tail) poll(fn func(Event)) error {
	ents, err := os.ReadDir(t.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, runsPrefix) || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		f, err := os.Open(filepath.Join(t.dir, name))
		if err != nil {
			return err
		}
		if _, err := f.Seek(t.off[name], io.SeekStart); err != nil {
			_ = f.Close() // read only
			return err
		}
		b, err := io.ReadAll(f)
		_ = f.Close() // read only: the read's error is the one that counts
		if err != nil {
			return err
		}
		t.off[name] += int64(len(b))
		b = append(t.part[name], b...)
		i := bytes.LastIndexByte(b, '\n')
		t.part[name] = append([]byte(nil), b[i+1:]...)
		var torn int
		if err := readEvents(bytes.NewReader(b[:i+1]), &torn, fn); err != nil {
			return fmt.Errorf("history %s: %w", name, err)
		}
	}
	return nil
}
