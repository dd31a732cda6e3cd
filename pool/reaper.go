package pool

import (
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Timing of the reaper. The processes an exited child left behind live
// OrphanGrace after the child's exit plus at most sweepInterval (and the
// time a scan of /proc takes).
const (
	// sweepInterval is how often the reaper scans /proc while an exited
	// child's session still has processes in it.
	sweepInterval = 25 * time.Millisecond
	// exitSweepInterval is the least time between two sweeps for SIGCHLD,
	// which reap what was reparented to this process and has exited. A
	// scan of /proc takes milliseconds (6ms for 140 processes measured).
	exitSweepInterval = 100 * time.Millisecond
	// exitSweepDelay is how long a sweep for SIGCHLD waits for another
	// reason to sweep: when a child of the pool's exits, runProc ends its
	// session just after.
	exitSweepDelay = 10 * time.Millisecond
	// reaperStopTimeout bounds how long Run waits, once every child has
	// exited, for what they left behind to be killed and reaped: processes
	// stuck in the kernel (uninterruptible sleep) may not die at once.
	reaperStopTimeout = 5 * time.Second
)

// reaper kills and reaps what the children leave behind.
//
// Each child runs in a session of its own, whose ID is the child's PID.
// Its descendants stay in that session unless they leave it themselves
// (setsid), whatever process groups they make (forq's exec tasks run in
// groups of their own). The supervising process is a child subreaper, so
// that a descendant whose parent dies is reparented to it rather than to
// init.
//
// While a child runs, the descendants it orphans (a shell that exits and
// leaves a background job) run on; the reaper reaps them when they exit.
// Once the child has exited, its session is ended: every process still in
// it that descends from this process gets SIGTERM, and SIGKILL after
// OrphanGrace; the reaper reaps those reparented to this process, until the
// session is empty.
//
// It never waits for any PID but those: os/exec waits for its own children
// by PID, and a wait for any child would steal their exit status. A child
// of the pool itself is a session leader (pid = sid) and is never reaped
// here. With ReapAll it also reaps any other exited child of this process
// that is not one of the pool's children.
type reaper struct {
	self    int
	grace   time.Duration
	reapAll bool
	log     *slog.Logger
	wake    chan struct{} // buffered: a session ended

	// mu is held while a child is forked and registered, and while a sweep
	// decides, so that a sweep never takes a child just forked for a
	// stranger.
	mu       sync.Mutex
	sessions map[int]*session // by session ID, the child's PID
}

// session is what the reaper knows of one child's session.
type session struct {
	endedAt time.Time // when the child exited; zero while it runs
	termed  bool      // its leftovers were sent SIGTERM
	reaped  bool      // the child itself has been reaped (by runProc)
}

func newReaper(cfg *Config) *reaper {
	return &reaper{
		self:     os.Getpid(),
		grace:    cfg.OrphanGrace,
		reapAll:  cfg.ReapAll,
		log:      cfg.Logger,
		wake:     make(chan struct{}, 1),
		sessions: make(map[int]*session),
	}
}

// start forks a child with start and registers its session, under the lock
// a sweep decides under.
func (rp *reaper) start(start func() (pid int, err error)) error {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	pid, err := start()
	if err != nil {
		return err
	}
	rp.sessions[pid] = &session{}
	return nil
}

// ended tells the reaper that the child whose PID is sid has exited (it is
// a zombie not yet reaped): what it left in its session is to be killed.
func (rp *reaper) ended(sid int, at time.Time) {
	rp.mu.Lock()
	if s := rp.sessions[sid]; s != nil {
		s.endedAt = at
	}
	rp.mu.Unlock()
	select {
	case rp.wake <- struct{}{}:
	default:
	}
}

// reaped tells the reaper that the child whose PID is sid has been reaped.
func (rp *reaper) reaped(sid int) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if s := rp.sessions[sid]; s != nil {
		s.reaped = true
	}
}

// run sweeps whenever a child of this process exits (SIGCHLD, after
// exitSweepDelay and at most once per exitSweepInterval), a child's session
// ends, or a deadline of an ended session comes, until stop is closed and
// every ended session is empty (or reaperStopTimeout has passed since
// stop).
func (rp *reaper) run(stop <-chan struct{}) {
	sigc := make(chan os.Signal, 1)
	notifyChildExits(sigc)
	defer signal.Stop(sigc)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	rearm := func(at time.Time) {
		timer.Stop()
		if !at.IsZero() {
			timer.Reset(time.Until(at))
		}
	}
	// next: when sweep asked to be called again; exit: when to sweep for
	// the SIGCHLDs received since the last sweep; zero: no need.
	var stopAt, next, exit, last time.Time
	for {
		select {
		case <-sigc:
			// A scan of /proc is not cheap. A sweep that comes for another
			// reason meanwhile (a child of the pool's exited: its session
			// ended) serves, and the exits of a pool that recycles its
			// children often are taken together.
			if exit.IsZero() {
				exit = time.Now().Add(exitSweepDelay)
				if due := last.Add(exitSweepInterval); due.After(exit) {
					exit = due
				}
			}
			rearm(earliest(next, exit))
			continue
		case <-rp.wake:
		case <-timer.C:
		case <-stop:
			stop, stopAt = nil, time.Now()
		}
		now := time.Now()
		var left []int
		last, exit = now, time.Time{}
		next, left = rp.sweep(now)
		if !stopAt.IsZero() {
			if len(left) == 0 {
				return
			}
			if now.Sub(stopAt) >= reaperStopTimeout {
				rp.log.Error("processes left by exited children would not die", "pids", left,
					"waited", reaperStopTimeout)
				return
			}
		}
		rearm(next)
	}
}

// earliest returns the earlier of a and b, ignoring a zero time.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// sweep scans /proc once: it reaps the exited processes reparented to this
// one that belong to a child's session, signals the live processes of
// ended sessions, and forgets the ended sessions found empty. It returns
// when to sweep again (zero: only on the next SIGCHLD or ended session)
// and the PIDs of ended sessions not yet gone: alive, or exited but not
// yet reaped by a parent that is itself to be killed.
func (rp *reaper) sweep(now time.Time) (next time.Time, left []int) {
	procs, err := listProcs()
	if err != nil {
		rp.log.Error("scan processes", "err", err)
		return now.Add(sweepInterval), nil
	}
	byPID := make(procTable, len(procs))
	for _, p := range procs {
		byPID[p.pid] = p
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	pending := map[int]int{} // ended sessions: processes not gone
	for _, p := range procs {
		if rp.sweepProc(now, p, byPID) {
			pending[p.sid]++
			left = append(left, p.pid)
		}
	}
	return rp.settleSessions(now, pending), left
}

// procTable is one scan of /proc, by PID.
type procTable map[int]procInfo

// descends reports whether pid descends from the process self. It tells a
// process of an ended session from a stranger that took its session ID
// after the session emptied and the ID was freed.
func (t procTable) descends(pid, self int) bool {
	for range len(t) + 1 {
		p, ok := t[pid]
		if !ok {
			return false
		}
		if p.ppid == self {
			return true
		}
		pid = p.ppid
	}
	return false
}

// sweepProc handles process p of a sweep, with rp.mu held: it reaps p if
// it is an exited process left to this one, and signals it if it is a
// live process of an ended session. It reports whether p belongs to an
// ended session and is not gone yet.
func (rp *reaper) sweepProc(now time.Time, p procInfo, byPID procTable) (pending bool) {
	s := rp.sessions[p.sid]
	ended := s != nil && !s.endedAt.IsZero()
	// A child of the pool's own (pid = sid) is never taken: runProc
	// waits for it.
	leftover := s != nil && p.pid != p.sid
	if p.zombie {
		if p.ppid == rp.self {
			if leftover || rp.reapAll && rp.sessions[p.pid] == nil {
				if ok, ws := reapPID(p.pid); ok {
					rp.log.Debug("reaped a process left by a child", "pid", p.pid, "session", p.sid,
						"status", waitStatus(ws))
				}
			}
			return false
		}
		// Its parent is to be killed too: it comes to us then.
		return ended && leftover && byPID[p.ppid].sid == p.sid && byPID.descends(p.pid, rp.self)
	}
	if !ended || !leftover || !byPID.descends(p.pid, rp.self) {
		return false
	}
	sig := syscall.SIGKILL
	if now.Before(s.endedAt.Add(rp.grace)) {
		if s.termed {
			return true
		}
		sig = syscall.SIGTERM
	}
	if err := signalInSession(p.pid, p.sid, sig); err != nil {
		rp.log.Error("signal a process left by a child", "pid", p.pid, "session", p.sid, "signal", sig, "err", err)
	}
	return true
}

// settleSessions, with rp.mu held, marks the ended sessions with pending
// processes as signaled and forgets the reaped ones found empty. It
// returns when to sweep again (zero: not for these sessions).
func (rp *reaper) settleSessions(now time.Time, pending map[int]int) (next time.Time) {
	for sid, s := range rp.sessions {
		switch {
		case s.endedAt.IsZero():
		case pending[sid] > 0:
			if !s.termed {
				s.termed = true
				rp.log.Warn("killing what an exited child left running", "child_pid", sid,
					"processes", pending[sid], "grace", rp.grace)
			}
			next = minTime(next, now.Add(sweepInterval))
			if kill := s.endedAt.Add(rp.grace); now.Before(kill) {
				next = minTime(next, kill)
			}
		case s.reaped:
			delete(rp.sessions, sid)
		}
	}
	return next
}

// waitStatus describes ws as os.ProcessState does.
func waitStatus(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	}
	return "unknown"
}
