//go:build linux

package pool

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// gone reports whether pid no longer exists, not even as a zombie.
func gone(pid int) bool {
	_, err := procStat(pid)
	return errors.Is(err, os.ErrNotExist)
}

// leftovers returns those of pids that are not gone, each with its state
// and parent.
func leftovers(t *testing.T, pids []int) map[int]string {
	t.Helper()
	out := map[int]string{}
	for _, pid := range pids {
		if st, err := procStat(pid); err == nil {
			out[pid] = "state " + string(st.state) + ", parent " + strconv.Itoa(st.ppid)
		}
	}
	return out
}

// A child SIGKILLed on its own, while the pool lives, leaves an exec-like
// command behind: a shell that ignores SIGTERM dies of its parent-death
// signal, but its child sleep (which ignores SIGTERM too) is orphaned. The
// pool, a child subreaper, gets it, kills it after OrphanGrace and reaps
// it: within 1s (1.5s with slack) neither is alive nor a zombie, and the pool runs on with
// a new child.
func TestOrphansOfKilledChildAreKilled(t *testing.T) {
	const rounds = 3
	tp := startPool(t, Config{Size: 2}, "orphan")
	var tooks []time.Duration
	for round := range rounds {
		waitFor(t, 10*time.Second, "2 children with their commands", func() bool {
			return len(tp.Children()) == 2 && len(recorded(t, tp.dir, "orphan")) == 2+round
		})
		cs := tp.Children()
		victim := cs[round%2]
		// The victim's command and its child: the records after the victim's
		// own, in its session.
		var pids []int
		for _, kind := range []string{"command", "orphan"} {
			for _, pid := range recorded(t, tp.dir, kind) {
				if st, err := sessionOf(pid); err == nil && st == victim.PID {
					pids = append(pids, pid)
				}
			}
		}
		if len(pids) != 2 {
			t.Fatalf("round %d: processes in child %d's session: got %v, want its shell and sleep", round, victim.PID, pids)
		}
		if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		for slices.ContainsFunc(pids, func(pid int) bool { return !gone(pid) }) && time.Since(killed) < 2*time.Second {
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(killed)
		tooks = append(tooks, took)
		// 1s is the figure the pool is held to (issue 14); the slack is for
		// a race-enabled build on a loaded machine.
		if left := leftovers(t, pids); len(left) > 0 || took > 1500*time.Millisecond {
			t.Fatalf("round %d: %v after child %d was SIGKILLed, its command and the command's child are not gone: %v",
				round, took.Round(time.Millisecond), victim.PID, left)
		}
		tp.assertRunning(t)
	}
	t.Logf("%d children SIGKILLed: shell and sleep gone (killed and reaped) after %v", rounds, tooks)
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// sessionOf returns the session ID of pid.
func sessionOf(pid int) (int, error) {
	p, err := readProcStat(pid)
	return p.sid, err
}

// At shutdown the children exit on SIGTERM and leave their commands
// running: by the time Run returns, every shell and sleep they left is
// killed and reaped.
func TestOrphansKilledAtShutdown(t *testing.T) {
	tp := startPool(t, Config{Size: 2}, "orphan")
	waitFor(t, 10*time.Second, "2 children with their commands", func() bool {
		return len(recorded(t, tp.dir, "orphan")) == 2 && len(tp.Children()) == 2
	})
	pids := append(recorded(t, tp.dir, "command"), recorded(t, tp.dir, "orphan")...)
	start := time.Now()
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
	t.Logf("Run returned %v after cancel", time.Since(start).Round(time.Millisecond))
	if left := leftovers(t, pids); len(left) > 0 {
		t.Errorf("after Run returned, the commands the children left are not gone: %v", left)
	}
}

// A descendant orphaned while its child runs (a shell that exits and
// leaves a background job) is reparented to the pool and lives on, as it
// would under init; when it exits, the pool reaps it. With ReapAll the
// same holds of one that left the child's session (setsid); without,
// that one stays a zombie, as documented.
func TestOrphanOfLiveChild(t *testing.T) {
	for _, tt := range []struct {
		name    string
		mode    string
		reapAll bool
		reaped  bool
	}{
		{"in the child's session", "orphan-alive", false, true},
		{"own session, ReapAll", "orphan-setsid", true, true},
		{"own session, no ReapAll", "orphan-setsid", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tp := startPool(t, Config{Size: 1, ReapAll: tt.reapAll}, tt.mode)
			waitFor(t, 10*time.Second, "the child's orphan", func() bool {
				return len(recorded(t, tp.dir, "orphan")) == 1
			})
			orphan := recorded(t, tp.dir, "orphan")[0]
			var st stat
			waitFor(t, time.Second, "the orphan reparented to the pool", func() bool {
				var err error
				st, err = procStat(orphan)
				return err == nil && st.ppid == os.Getpid()
			})
			if st.state == 'Z' {
				t.Fatalf("orphan %d exited before it was seen running", orphan)
			}
			// It lives its 1.5s: the child that started it lives.
			time.Sleep(200 * time.Millisecond)
			if !alive(orphan) {
				t.Errorf("orphan %d of a live child was killed", orphan)
			}
			waitFor(t, 5*time.Second, "the orphan to exit", func() bool { return !alive(orphan) })
			exited := time.Now()
			for !gone(orphan) && time.Since(exited) < time.Second {
				time.Sleep(5 * time.Millisecond)
			}
			if tt.reaped {
				if !gone(orphan) {
					t.Errorf("orphan %d not reaped 1s after it exited: %v", orphan, leftovers(t, []int{orphan}))
				}
				t.Logf("orphan %d reaped %v after it exited", orphan, time.Since(exited).Round(time.Millisecond))
			} else {
				if gone(orphan) {
					t.Errorf("orphan %d in a session of its own was reaped without ReapAll", orphan)
				}
				var ws syscall.WaitStatus
				_, _ = syscall.Wait4(orphan, &ws, syscall.WNOHANG, nil) // no zombie left behind by the test
			}
			if len(tp.Children()) != 1 {
				t.Errorf("children: got %v, want the one child, untouched", tp.Children())
			}
			if err := tp.stop(t); err != nil {
				t.Errorf("Run: got %v, want nil", err)
			}
		})
	}
}

// The reaper never takes the exit of a process that other code of this
// process started and waits for (os/exec): while children recycle every
// 20ms, each exit a SIGCHLD and a sweep, 20 commands started here, each
// waited for only once it has exited and a sweep has come by (its own exit
// sends SIGCHLD), each report its own exit status; and more until 10
// children were recycled meanwhile.
func TestReaperLeavesOtherChildrenAlone(t *testing.T) {
	tp := startPool(t, Config{Size: 2}, "recycle", envReady+"=1", envMs+"=20")
	// At least 20 commands, and as many more as it takes for 10 recycles
	// to happen meanwhile (children start slower under -race on a busy
	// machine).
	const n, most = 20, 400
	start := time.Now()
	for i := 0; i < n || tp.Recycles() < 10; i++ {
		if i == most {
			t.Fatalf("%d commands and only %d recycles meanwhile; want 10", most, tp.Recycles())
		}
		cmd := exec.Command("sh", "-c", "exit 7")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the command to exit", func() bool {
			st, err := procStat(cmd.Process.Pid)
			return err != nil || st.state == 'Z'
		})
		time.Sleep(50 * time.Millisecond)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("command %d: got %v, want exit status 7", i, err)
		}
	}
	t.Logf("commands waited for while %d children were recycled, in %v", tp.Recycles(),
		time.Since(start).Round(time.Millisecond))
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}
