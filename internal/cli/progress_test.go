package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The progress reporter's goroutine ends with Finish; the bar ends at the
// final count, even short of the total; plain lines measure a rate.
func TestProgressFinish(t *testing.T) {
	defer goleak.VerifyNone(t)
	labels := progressLabels{desc: "enqueue", verb: "enqueued", unit: "tasks"}

	var bar syncBuffer
	p := newProgress("always", &bar, 0, false, labels, 1000)
	p.Set(400)
	time.Sleep(3 * barRedraw)
	p.Set(700)
	p.Finish()
	p.Finish()
	if s := bar.String(); !strings.Contains(s, "700/1000") || strings.Contains(s, "1000/1000") || !strings.HasSuffix(s, "\n") {
		t.Errorf("bar short of its total: want it to end at 700/1000 with a newline, got %q", s)
	}

	var plain syncBuffer
	p = newProgress("auto", &plain, 20*time.Millisecond, false, labels, 1000)
	for i := range 10 {
		p.Set(int64(i+1) * 100)
		time.Sleep(10 * time.Millisecond)
	}
	p.Finish()
	s := plain.String()
	if strings.ContainsAny(s, "\r\x1b") || !strings.Contains(s, "/s, ETA ") || !strings.Contains(s, "enqueued 1000/1000 tasks in ") {
		t.Errorf("plain lines: %q", s)
	}

	var none syncBuffer
	p = newProgress("never", &none, 0, false, labels, 1000)
	p.Set(1)
	p.Finish()
	if none.String() != "" {
		t.Errorf("--progress never wrote %q", none.String())
	}

	// Draining: the total grows with the backlog.
	var drain syncBuffer
	p = newProgress("auto", &drain, time.Hour, false, progressLabels{verb: "drained", unit: "tasks", left: "left"}, 10)
	p.startBacklog(10)
	p.Backlog(4) // 6 done
	p.Backlog(9) // 5 more came: total 15
	p.Backlog(0) // all done
	p.Finish()
	if s := drain.String(); !strings.Contains(s, "drained 15/15 tasks in ") {
		t.Errorf("drain: %q", s)
	}
}
