package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Child describes one running child process of a [Supervisor].
type Child struct {
	Index   int       // the child's index in the pool, as in its EnvIndex
	PID     int       // its process ID, which is also its process group and session ID
	Started time.Time // when it was started
	// Ready is whether the child is ready: it signalled so (see [Ready]),
	// or it has run for [Config.ReadyTimeout].
	Ready bool
}

// Supervisor runs and supervises the children described by a [Config].
// Create one with [New] and run it with [Supervisor.Run].
type Supervisor struct {
	cfg     Config
	out     *output
	started atomic.Bool

	mu       sync.Mutex
	children map[int]Child

	restarts atomic.Int64 // crash restarts scheduled
	recycles atomic.Int64 // replacements asked for, or for memory
}

// Restarts returns how many times children were restarted after crashing.
func (s *Supervisor) Restarts() int64 { return s.restarts.Load() }

// Recycles returns how many children were replaced because they asked to
// be (RecycleExitCode) or passed MaxRSS.
func (s *Supervisor) Recycles() int64 { return s.recycles.Load() }

// New returns a Supervisor for cfg with its defaults filled in. It returns
// an error wrapping [ErrInvalidConfig] if cfg is invalid (no Command, a
// negative value, Min > Max, autoscaling or UntilEmpty without Backlog,
// StructuredOutput without Logger, ...), and one wrapping
// [errors.ErrUnsupported] on systems other than Linux.
func New(cfg Config) (*Supervisor, error) {
	if err := checkPlatform(); err != nil {
		return nil, err
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Supervisor{
		cfg: c,
		out: &output{
			stdout:     c.Stdout,
			stderr:     c.Stderr,
			logger:     c.Logger,
			structured: c.StructuredOutput,
			noPrefix:   c.NoPrefix,
		},
		children: make(map[int]Child),
	}, nil
}

// Children returns a snapshot of the running children, ordered by index.
// A child waiting to be restarted is not in it. It is safe to call from any
// goroutine, also while Run runs.
func (s *Supervisor) Children() []Child {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := make([]Child, 0, len(s.children))
	for _, c := range s.children {
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b Child) int { return cmp.Compare(a.Index, b.Index) })
	return cs
}

func (s *Supervisor) setChild(c Child) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.children[c.Index] = c
}

func (s *Supervisor) removeChild(index int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.children, index)
}

// Run starts the children and supervises them until the pool stops, then
// returns once every child has been reaped, what the children left in
// their sessions has been killed and reaped (see the package doc; Run waits
// at most 5s for processes that will not die), and every goroutine Run
// started has exited. While it runs, the process is a child subreaper
// (PR_SET_CHILD_SUBREAPER). A Supervisor can be run once; a second call
// returns an error.
//
// The pool stops when ctx is canceled, on a restart storm, or, with
// UntilEmpty, when the backlog is zero or every child is done. Stopping
// sends SIGTERM to every child, waits up to Grace for them to exit, and
// then SIGKILLs the process group of each child still running.
//
// Run returns nil if every child exited within the grace period. Otherwise
// it returns an error wrapping [ErrRestartStorm] after a restart storm,
// one wrapping [ErrGraceExpired] if children had to be killed, or both
// joined. If the very first child cannot be started (for instance the
// command does not exist), Run returns that error at once; later start
// failures count as crashes.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("pool: Run called more than once")
	}
	if ctx.Err() != nil {
		return nil //nolint:nilerr // stopped before any child started: none was killed, so nil
	}
	r := &runner{
		s:       s,
		cfg:     &s.cfg,
		log:     s.cfg.Logger,
		slots:   make(map[int]*slot),
		readies: make(chan *proc),
		exits:   make(chan exit),
	}
	return r.run(ctx)
}

// slot is one place in the pool, identified by its index. A child replaced
// after a crash, recycle or memory excess takes the same slot.
type slot struct {
	index     int
	proc      *proc       // the running child; nil while waiting for a restart
	restartAt time.Time   // when proc is nil: when to start it again
	crashes   []time.Time // failures to start in a row, within RestartWindow
	backoff   int         // the exponent of the next restart delay
	restarts  int         // crash restarts of this slot so far (EnvRestarts)

	// ready is whether the running child is ready: it signalled so or ran
	// for ReadyTimeout. Reset at each start.
	ready bool

	// What was asked of the running child; reset at each start.
	termAt  time.Time // when it was sent SIGTERM; zero if it was not
	killAt  time.Time // when its group gets SIGKILL if it is still running
	killed  bool      // its group was SIGKILLed at killAt
	retire  bool      // shrinking: not to be replaced
	replace bool      // above MaxRSS: to be replaced at once
}

type backlog struct {
	n   int64
	err error
	at  time.Time
}

// runner is the state of one Run. All of it is owned by the goroutine of
// Run except what is noted.
type runner struct {
	s       *Supervisor
	cfg     *Config
	log     *slog.Logger
	slots   map[int]*slot
	readies chan *proc     // from the runProc goroutines
	exits   chan exit      // from the runProc goroutines
	wg      sync.WaitGroup // runProc goroutines and the backlog poller
	reaper  *reaper

	stopping  bool
	stopPoll  context.CancelFunc
	stopErr   error     // the reason to return an error, if any
	stopping0 int       // the number of children running when stopping began
	killed    int       // children killed at the end of the shutdown grace
	lastN     int64     // the previous backlog
	idleSince time.Time // since when the backlog has been zero
}

func (r *runner) run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	var rssC <-chan time.Time
	if r.cfg.MaxRSS > 0 {
		t := time.NewTicker(r.cfg.RSSInterval)
		defer t.Stop()
		rssC = t.C
	}

	undo, err := becomeSubreaper()
	if err != nil {
		return err
	}
	defer undo()
	r.reaper = newReaper(r.cfg)
	stopReaper, reaperDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(reaperDone); r.reaper.run(stopReaper) }()

	pollCtx, stopPoll := context.WithCancel(context.WithoutCancel(ctx))
	r.stopPoll = stopPoll
	var backlogC chan backlog
	if r.cfg.Backlog != nil && (r.cfg.Max > 0 || r.cfg.UntilEmpty) {
		backlogC = make(chan backlog)
		r.wg.Go(func() { r.poll(pollCtx, backlogC) })
	}

	// Debug: a command line is long, and may name what only its user
	// should read; the caller knows better what to say of its children.
	r.log.Debug("pool starting", "size", r.cfg.Size, "command", r.cfg.Command)
	for i := range r.cfg.Size {
		sl := &slot{index: i}
		r.slots[i] = sl
		if err := r.start(sl); err != nil {
			if i == 0 {
				delete(r.slots, i)
				r.stopErr = fmt.Errorf("pool: start child 0: %w", err)
				r.shutdown("start failed")
				break
			}
			r.crashed(sl, time.Now(), "start: "+err.Error(), true)
		}
	}

	done := ctx.Done()
	for !r.stopping || len(r.slots) > 0 {
		r.arm(timer)
		select {
		case <-done:
			done = nil
			r.shutdown("context canceled")
		case p := <-r.readies:
			r.ready(p, "signalled")
		case e := <-r.exits:
			r.exited(e)
		case now := <-timer.C:
			r.deadlines(now)
		case <-rssC:
			r.checkRSS()
		case b := <-backlogC:
			r.scale(b)
		}
		if r.cfg.UntilEmpty && len(r.slots) == 0 {
			r.shutdown("all children done")
		}
	}
	stopPoll()
	r.wg.Wait()
	// Every child has been reaped: what they left behind is killed and
	// reaped before Run returns.
	close(stopReaper)
	<-reaperDone

	var errs []error
	if r.stopErr != nil {
		errs = append(errs, r.stopErr)
	}
	if r.killed > 0 {
		errs = append(errs, fmt.Errorf("%w: %d of %d children did not exit within %v and were killed",
			ErrGraceExpired, r.killed, r.stopping0, r.cfg.Grace))
	}
	r.log.Info("pool stopped", "killed", r.killed)
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// start starts the child of sl.
func (r *runner) start(sl *slot) error {
	p := &proc{index: sl.index, restarts: sl.restarts}
	started := make(chan error, 1)
	r.wg.Go(func() { r.s.runProc(p, r.reaper, started, r.readies, r.exits) })
	if err := <-started; err != nil {
		r.log.Error("child start failed", "child", sl.index, "err", err)
		return err
	}
	sl.proc = p
	sl.restartAt = time.Time{}
	sl.ready = false
	sl.termAt, sl.killAt, sl.killed, sl.retire, sl.replace = time.Time{}, time.Time{}, false, false, false
	r.s.setChild(Child{Index: p.index, PID: p.pid, Started: p.started})
	r.log.Info("child started", "child", p.index, "pid", p.pid)
	return nil
}

// startOrCrash starts sl's child, counting a failure to start as a crash.
func (r *runner) startOrCrash(sl *slot) {
	if err := r.start(sl); err != nil {
		r.crashed(sl, time.Now(), "start: "+err.Error(), true)
	}
}

// ready marks p's child ready (how says whether it signalled so or ran for
// ReadyTimeout): its next crash is restarted after BackoffMin and does not
// count toward a restart storm.
func (r *runner) ready(p *proc, how string) {
	sl := r.slots[p.index]
	if sl == nil || sl.proc != p || sl.ready {
		return
	}
	sl.ready = true
	sl.backoff = 0
	sl.crashes = nil
	r.s.setChild(Child{Index: p.index, PID: p.pid, Started: p.started, Ready: true})
	r.log.Info("child ready", "child", p.index, "pid", p.pid, "how", how,
		"after", time.Since(p.started).Round(time.Millisecond))
}

// arm sets timer to the earliest pending restart, readiness or kill
// deadline.
func (r *runner) arm(timer *time.Timer) {
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, sl := range r.slots {
		switch {
		case sl.proc == nil && !r.stopping:
			earliest(sl.restartAt)
		case sl.proc != nil:
			if !sl.killed {
				earliest(sl.killAt)
			}
			if !sl.ready && !r.stopping {
				earliest(sl.proc.started.Add(r.cfg.ReadyTimeout))
			}
		}
	}
	if next.IsZero() {
		timer.Stop()
		return
	}
	timer.Reset(time.Until(next))
}

// deadlines restarts the children whose back-off is over, deems ready
// those that ran for ReadyTimeout without a word, and kills those whose
// grace period is over.
func (r *runner) deadlines(now time.Time) {
	for _, sl := range r.sortedSlots() {
		if sl.proc != nil && !sl.ready && !r.stopping && !now.Before(sl.proc.started.Add(r.cfg.ReadyTimeout)) {
			r.ready(sl.proc, "ran for ReadyTimeout without signalling")
		}
		switch {
		case sl.proc == nil && !r.stopping && !sl.restartAt.IsZero() && !now.Before(sl.restartAt):
			r.startOrCrash(sl)
		case sl.proc != nil && !sl.killed && !sl.killAt.IsZero() && !now.Before(sl.killAt):
			sl.killed = true
			if r.stopping {
				r.killed++
			}
			r.log.Warn("child did not exit within grace, killing its process group",
				"child", sl.index, "pid", sl.proc.pid, "grace", r.cfg.Grace)
			if err := sl.proc.killGroup(); err != nil {
				r.log.Error("kill process group", "child", sl.index, "pid", sl.proc.pid, "err", err)
			}
		}
	}
}

// exited handles the exit of a child.
func (r *runner) exited(e exit) {
	p := e.proc
	sl := r.slots[p.index]
	sl.proc = nil
	r.s.removeChild(p.index)
	ran := e.at.Sub(p.started)
	status := e.status()
	wasReady := sl.ready
	log := r.log.With("child", p.index, "pid", p.pid, "status", status, "ran", ran.Round(time.Millisecond))
	recycled := e.state != nil && e.state.Exited() && e.state.ExitCode() == r.cfg.RecycleExitCode
	clean := e.state != nil && e.state.Exited() && e.state.ExitCode() == 0
	switch {
	case r.stopping:
		log.Info("child exited")
		delete(r.slots, p.index)
	case sl.retire:
		log.Info("child exited after scale-down")
		delete(r.slots, p.index)
	case sl.replace:
		log.Info("child exited after exceeding MaxRSS, replacing it")
		r.s.recycles.Add(1)
		r.startOrCrash(sl)
	case recycled && !wasReady:
		// A child that asks to be replaced before it is ready would be
		// restarted in a tight loop if it did so at once every time: it is
		// replaced no sooner than its back-off after it started. One that
		// lived that long is replaced at once, and its back-off does not
		// grow.
		r.s.recycles.Add(1)
		delay := r.backoff(sl.backoff)
		if ran >= delay {
			log.Info("child asked to be recycled, replacing it")
			r.startOrCrash(sl)
			break
		}
		sl.backoff++
		sl.restartAt = p.started.Add(delay)
		log.Warn("child asked to be recycled before it was ready, replacing it after its back-off",
			"delay", delay.Round(time.Millisecond))
	case recycled:
		log.Info("child asked to be recycled, replacing it")
		r.s.recycles.Add(1)
		r.startOrCrash(sl)
	case clean && r.cfg.UntilEmpty:
		log.Info("child done")
		delete(r.slots, p.index)
	case wasReady:
		r.crashed(sl, e.at, status, false)
	default:
		// Killed from outside before it was ready (by an operator, the OOM
		// killer): restarted, but not a sign that it cannot start.
		r.crashed(sl, e.at, status, !killedFromOutside(e.state))
	}
}

// crashed schedules the restart of sl's crashed child after its back-off.
// A failure to start (startFailed) is counted, and stops the pool when it
// makes a restart storm.
func (r *runner) crashed(sl *slot, at time.Time, status string, startFailed bool) {
	window := r.cfg.RestartWindow
	if startFailed {
		sl.crashes = slices.DeleteFunc(sl.crashes, func(t time.Time) bool { return at.Sub(t) >= window })
		sl.crashes = append(sl.crashes, at)
		if n := len(sl.crashes); n > r.cfg.MaxRestarts {
			r.stopErr = fmt.Errorf("%w: child %d failed to start %d times in a row within %v (MaxRestarts %d): "+
				"each time it exited before it was ready; last: %s",
				ErrRestartStorm, sl.index, n, window, r.cfg.MaxRestarts, status)
			r.log.Error("restart storm, stopping the pool", "child", sl.index, "failures", n, "window", window, "last", status)
			r.shutdown("restart storm")
			return
		}
	}
	delay := r.backoff(sl.backoff)
	sl.backoff++
	r.s.restarts.Add(1)
	sl.restarts++
	sl.restartAt = at.Add(delay)
	msg := "child crashed, restarting"
	if startFailed {
		msg = "child failed to start, restarting"
	}
	r.log.Warn(msg, "child", sl.index, "status", status,
		"delay", delay.Round(time.Millisecond), "start_failures", len(sl.crashes), "window", window)
}

// backoff returns the restart delay after n earlier restarts: BackoffMin
// doubled n times, plus up to 50% jitter, capped at BackoffMax.
func (r *runner) backoff(n int) time.Duration {
	d, maxD := r.cfg.BackoffMin, r.cfg.BackoffMax
	for i := 0; i < n && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	if half := int64(d / 2); half > 0 {
		d += time.Duration(rand.Int64N(half + 1))
	}
	return min(d, maxD)
}

// terminate asks sl's running child to stop: SIGTERM now, SIGKILL of its
// group at the end of the grace period.
func (r *runner) terminate(sl *slot, now time.Time) {
	if sl.termAt.IsZero() {
		sl.termAt = now
		sl.killAt = now.Add(r.cfg.Grace)
		if err := sl.proc.signal(syscall.SIGTERM); err != nil {
			r.log.Error("signal child", "child", sl.index, "pid", sl.proc.pid, "err", err)
		}
	}
}

// shutdown begins stopping the pool: no more restarts or scaling, SIGTERM
// to every child, SIGKILL at the end of the grace period. It is idempotent.
func (r *runner) shutdown(reason string) {
	if r.stopping {
		return
	}
	r.stopping = true
	r.stopPoll()
	now := time.Now()
	r.log.Info("pool stopping", "reason", reason, "grace", r.cfg.Grace)
	for i, sl := range r.slots {
		if sl.proc == nil {
			delete(r.slots, i)
			continue
		}
		r.stopping0++
		r.terminate(sl, now)
		// A child already stopping for scale-down or MaxRSS keeps the
		// earlier of its own deadline and the pool's.
		sl.killAt = minTime(sl.killAt, now.Add(r.cfg.Grace))
	}
}

// checkRSS stops, to replace them, the children above MaxRSS.
func (r *runner) checkRSS() {
	if r.stopping {
		return
	}
	now := time.Now()
	for _, sl := range r.slots {
		if sl.proc == nil || !sl.termAt.IsZero() {
			continue
		}
		rss, err := RSS(sl.proc.pid)
		if err != nil || rss <= r.cfg.MaxRSS {
			continue // an error means the child is exiting: its exit will tell
		}
		r.log.Warn("child above MaxRSS, replacing it", "child", sl.index, "pid", sl.proc.pid,
			"rss", rss, "max_rss", r.cfg.MaxRSS)
		sl.replace = true
		r.terminate(sl, now)
	}
}

// poll reports the backlog every ScaleInterval until ctx is canceled.
func (r *runner) poll(ctx context.Context, out chan<- backlog) {
	t := time.NewTicker(r.cfg.ScaleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := r.cfg.Backlog(ctx)
		select {
		case out <- backlog{n: n, err: err, at: time.Now()}:
		case <-ctx.Done():
			return
		}
	}
}

// scale acts on a backlog report: it stops an UntilEmpty pool once the
// backlog is zero, and grows or shrinks an autoscaled one.
func (r *runner) scale(b backlog) {
	if r.stopping {
		return
	}
	if b.err != nil {
		r.log.Warn("backlog", "err", b.err)
		return
	}
	if r.cfg.UntilEmpty && b.n == 0 {
		r.shutdown("backlog empty")
		return
	}
	if r.cfg.Max == 0 {
		return
	}
	prev := r.lastN
	r.lastN = b.n
	active := r.activeSlots()
	n := len(active)
	if b.n > 0 {
		r.idleSince = time.Time{}
		if n < r.cfg.Max && (b.n > int64(n) || b.n > prev) {
			i := r.freeIndex()
			sl := &slot{index: i}
			r.slots[i] = sl
			r.log.Info("scaling up", "children", n+1, "backlog", b.n)
			r.startOrCrash(sl)
		}
		return
	}
	if r.idleSince.IsZero() {
		r.idleSince = b.at
		return
	}
	if b.at.Sub(r.idleSince) < r.cfg.IdleTimeout || n <= r.cfg.Min {
		return
	}
	r.idleSince = b.at
	sl := active[n-1]
	r.log.Info("scaling down", "children", n-1, "child", sl.index)
	if sl.proc == nil {
		delete(r.slots, sl.index)
		return
	}
	sl.retire = true
	r.terminate(sl, b.at)
}

// activeSlots returns the slots not being retired, ordered by index.
func (r *runner) activeSlots() []*slot {
	var a []*slot
	for _, sl := range r.sortedSlots() {
		if !sl.retire {
			a = append(a, sl)
		}
	}
	return a
}

func (r *runner) sortedSlots() []*slot {
	ss := make([]*slot, 0, len(r.slots))
	for _, sl := range r.slots {
		ss = append(ss, sl)
	}
	slices.SortFunc(ss, func(a, b *slot) int { return cmp.Compare(a.index, b.index) })
	return ss
}

// freeIndex returns the lowest index not taken by a slot.
func (r *runner) freeIndex() int {
	for i := 0; ; i++ {
		if _, ok := r.slots[i]; !ok {
			return i
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
