package cli

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// ProgressFlags are the flags of commands that do long work: a bulk
// enqueue, a pool draining its queue.
type ProgressFlags struct {
	Progress         string        `enum:"auto,always,never" default:"auto" help:"Progress on standard error: auto (a bar with rate and ETA on a terminal, plain lines otherwise), always (the bar even off a terminal), never."`
	ProgressInterval time.Duration `default:"2s" help:"How often a plain progress line is printed when standard error is not a terminal."`
}

// barRedraw is how often the progress bar is redrawn on a terminal.
const barRedraw = 200 * time.Millisecond

// rateWindow is how far back the rate of the plain lines looks.
const rateWindow = 10 * time.Second

// progress reports the advance of long work, done out of total, on w: a
// bar redrawn in place on a terminal, plain lines every interval
// otherwise. The work updates it with Set/Add (atomics, cheap from any
// goroutine); one goroutine of its own draws, and Finish stops it. A nil
// *progress is off: all its methods do nothing.
type progress struct {
	w     io.Writer
	bar   bool          // a bar redrawn in place, else plain lines
	every time.Duration // between draws
	verb  string        // "enqueued"
	unit  string        // "tasks"
	left  string        // if set, plain lines show the remainder: "N <left>"
	desc  string        // the bar's label

	done, total atomic.Int64

	mu      sync.Mutex // output: the bar and writes through Writer
	pb      *progressbar.ProgressBar
	drawn   bool // the bar is on screen, to be cleared before other output
	start   time.Time
	samples []sample // recent (time, done), for the plain lines' rate

	backlogMu   sync.Mutex
	lastBacklog int64

	stop     chan struct{}
	finished chan struct{}
	once     sync.Once
}

type sample struct {
	at   time.Time
	done int64
}

// progressLabels name the work in the bar and in the plain lines.
type progressLabels struct {
	desc string // the bar's label: "enqueue"
	verb string // "enqueued"
	unit string // "tasks"
	left string // if set, plain lines show the remainder: "N <left>"
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// newProgress starts reporting progress on w in the given mode (auto,
// always, never); plainOnly makes auto choose plain lines even on a
// terminal (when other output shares it line by line). It returns nil
// for "never".
func newProgress(mode string, w io.Writer, interval time.Duration, plainOnly bool, l progressLabels, total int64) *progress {
	if mode == "never" {
		return nil
	}
	p := &progress{
		w:        w,
		bar:      mode == "always" || (isTerminal(w) && !plainOnly),
		every:    interval,
		verb:     l.verb,
		unit:     l.unit,
		left:     l.left,
		desc:     l.desc,
		start:    time.Now(),
		stop:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	if p.bar {
		p.every = barRedraw
	}
	if p.every <= 0 {
		p.every = 2 * time.Second
	}
	p.total.Store(total)
	p.samples = []sample{{p.start, 0}}
	p.mu.Lock()
	p.draw(false)
	p.mu.Unlock()
	go p.loop()
	return p
}

// Set records how much is done.
func (p *progress) Set(n int64) {
	if p != nil {
		p.done.Store(n)
	}
}

// Backlog records the work left, for draining: the total is the backlog
// at the start plus whatever was added since (each rise of the backlog),
// and done is the total less the backlog. Calls must not overlap.
func (p *progress) Backlog(n int64) {
	if p == nil {
		return
	}
	p.backlogMu.Lock()
	defer p.backlogMu.Unlock()
	if n > p.lastBacklog {
		p.total.Add(n - p.lastBacklog)
	}
	p.lastBacklog = n
	p.done.Store(max(p.total.Load()-n, 0))
}

// startBacklog sets the backlog at the start of draining: the total.
func (p *progress) startBacklog(n int64) {
	if p == nil {
		return
	}
	p.backlogMu.Lock()
	defer p.backlogMu.Unlock()
	p.lastBacklog = n
	p.total.Store(n)
	p.done.Store(0)
}

func (p *progress) loop() {
	defer close(p.finished)
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			p.draw(false)
			p.mu.Unlock()
		}
	}
}

// Finish stops the drawing goroutine and draws the final state: the bar
// at the final count, or a last plain line. It may be called more than
// once.
func (p *progress) Finish() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		close(p.stop)
		<-p.finished
		p.mu.Lock()
		defer p.mu.Unlock()
		p.draw(true)
	})
}

func (p *progress) isBar() bool { return p != nil && p.bar }

// Writer returns w wrapped so that what is written through it does not
// mix with the bar: the bar is cleared first and redrawn at the next tick.
// Writes must be whole lines.
func (p *progress) Writer(w io.Writer) io.Writer {
	if p == nil || !p.bar {
		return w
	}
	return progressWriter{p, w}
}

type progressWriter struct {
	p *progress
	w io.Writer
}

func (pw progressWriter) Write(b []byte) (int, error) {
	pw.p.mu.Lock()
	defer pw.p.mu.Unlock()
	if pw.p.drawn && pw.p.pb != nil {
		_ = pw.p.pb.Clear()
		pw.p.drawn = false
	}
	return pw.w.Write(b)
}

// draw draws the current state; with p.mu held.
func (p *progress) draw(final bool) {
	done, total := p.done.Load(), p.total.Load()
	now := time.Now()
	if p.bar {
		p.drawBar(done, total, final)
		return
	}
	if !final && now.Sub(p.start) < p.every/2 {
		return // the first line comes after one interval
	}
	p.samples = append(p.samples, sample{now, done})
	for len(p.samples) > 2 && now.Sub(p.samples[1].at) >= rateWindow {
		p.samples = p.samples[1:]
	}
	var line string
	if final {
		elapsed := now.Sub(p.start)
		line = fmt.Sprintf("%s %d/%d %s in %s", p.verb, done, total, p.unit, roundDuration(elapsed))
		if elapsed > 0 {
			line += fmt.Sprintf(" (%.0f/s)", float64(done)/elapsed.Seconds())
		}
	} else {
		first := p.samples[0]
		rate := 0.0
		if d := now.Sub(first.at).Seconds(); d > 0 {
			rate = float64(done-first.done) / d
		}
		eta := "?"
		if rate > 0 {
			eta = roundDuration(time.Duration(float64(total-done) / rate * float64(time.Second)))
		}
		line = fmt.Sprintf("%s %d/%d %s", p.verb, done, total, p.unit)
		if p.left != "" {
			line += fmt.Sprintf(", %d %s", total-done, p.left)
		}
		line += fmt.Sprintf(" (%.0f/s, ETA %s)", rate, eta)
	}
	fmt.Fprintln(p.w, line)
}

// drawBar draws the bar; with p.mu held.
func (p *progress) drawBar(done, total int64, final bool) {
	if total <= 0 {
		return // nothing to show a share of (yet)
	}
	if p.pb == nil {
		p.pb = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription(p.desc),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString(p.unit),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionThrottle(0),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }),
		)
		p.drawn = true
	}
	if total != p.pb.GetMax64() {
		p.pb.ChangeMax64(total)
	}
	_ = p.pb.Set64(min(done, total))
	p.drawn = true
	if final {
		if !p.pb.IsFinished() {
			_ = p.pb.Exit() // short of the total: keep the count, end the line
		}
		p.drawn = false // the line is ended: output goes below it
	}
}

func roundDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// drainProgress reports a pool draining its queue: it reads the backlog
// at the start, and wraps backlog so that each reading updates the
// progress.
func drainProgress(ctx context.Context, pf ProgressFlags, w io.Writer, backlog func(context.Context) (int64, error)) (*progress, func(context.Context) (int64, error), error) {
	if pf.Progress == "never" {
		return nil, backlog, nil
	}
	n, err := backlog(ctx)
	if err != nil {
		return nil, nil, err
	}
	p := newProgress(pf.Progress, w, pf.ProgressInterval, false, progressLabels{desc: "drain", verb: "drained", unit: "tasks", left: "left"}, n)
	p.startBacklog(n)
	return p, func(ctx context.Context) (int64, error) {
		n, err := backlog(ctx)
		if err == nil {
			p.Backlog(n)
		}
		return n, err
	}, nil
}
