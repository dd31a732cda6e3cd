package torture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/sleep"
)

// The task types of the harness, registered by a worker whose environment
// names a history directory (EnvDir).
const (
	// TypeSafe records its start, does its work (sleeps for the duration
	// its payload names, e.g. "20ms"), records its end, and only then
	// returns: its worker acknowledges the task after its work is
	// recorded.
	TypeSafe = "torture"
	// TypeUnsafe is the negative control: it records its start and
	// returns at once, then does its work and records its end in the
	// background, as a handler that acknowledges before it works does.
	// A kill of its worker loses the tasks it was working on, and the
	// checker must say so.
	TypeUnsafe = "torture-unsafe"
)

// EnvDir is the environment variable that gives a worker process the
// history directory its harness handlers append to.
const EnvDir = "FORQ_TORTURE_DIR"

// Handlers are the harness's task handlers of one worker process; they
// append to the process's own history file.
type Handlers struct {
	log   *Log
	pid   int
	nonce string
	runs  atomic.Int64
	// bg tracks the unsafe handler's background work; nothing waits for
	// it (that is the defect it shows), but Close does.
	bg sync.WaitGroup
}

// NewHandlers opens this process's history file in dir and records that
// the worker is ready.
func NewHandlers(dir string) (*Handlers, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	h := &Handlers{pid: os.Getpid(), nonce: hex.EncodeToString(b[:])}
	var err error
	if h.log, err = OpenLog(filepath.Join(dir, RunsFile(h.pid, h.nonce))); err != nil {
		return nil, err
	}
	if err := h.log.Append(Event{Ev: EvWorker, PID: h.pid}); err != nil {
		_ = h.log.Close() // the Append's error is the one to report
		return nil, err
	}
	return h, nil
}

// Register adds TypeSafe and TypeUnsafe to w.
func (h *Handlers) Register(w *consumer.Worker) {
	w.HandleFunc(TypeSafe, h.safe)
	w.HandleFunc(TypeUnsafe, h.unsafe)
}

// Close waits for the unsafe handler's background work and closes the
// history file.
func (h *Handlers) Close() error {
	h.bg.Wait()
	return h.log.Close()
}

func (h *Handlers) begin(t *consumer.Task) (Event, time.Duration, error) {
	d, err := ParseWork(t.Payload)
	if err != nil {
		return Event{}, 0, fmt.Errorf("%w: %w", err, consumer.ErrPermanent)
	}
	ev := Event{Ev: EvStart, ID: t.ID, PID: h.pid, Attempt: t.Attempt,
		Run: h.nonce + "-" + strconv.FormatInt(h.runs.Add(1), 10)}
	if err := h.log.Append(ev); err != nil {
		return Event{}, 0, err
	}
	ev.Ev = EvEnd
	ev.T = time.Time{}
	return ev, d, nil
}

func (h *Handlers) safe(ctx context.Context, t *consumer.Task) ([]byte, error) {
	end, d, err := h.begin(t)
	if err != nil {
		return nil, err
	}
	end.Outcome = OutcomeOK
	if err = sleep.For(ctx, d); err != nil {
		end.Outcome, end.Err = OutcomeCanceled, err.Error()
	}
	if aerr := h.log.Append(end); aerr != nil && err == nil {
		return nil, aerr // unrecorded work is not done: run it again
	}
	return nil, err
}

func (h *Handlers) unsafe(_ context.Context, t *consumer.Task) ([]byte, error) {
	end, d, err := h.begin(t)
	if err != nil {
		return nil, err
	}
	h.bg.Go(func() {
		time.Sleep(d)
		end.Outcome = OutcomeOK
		_ = h.log.Append(end)
	})
	return nil, nil
}

// ParseWork reads a harness task's payload: how long its work takes, as
// "20ms".
func ParseWork(p []byte) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(string(p)))
	if err != nil || d < 0 {
		return 0, fmt.Errorf("torture payload %q is not a duration like 20ms", p)
	}
	return d, nil
}
