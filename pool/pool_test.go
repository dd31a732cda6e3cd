package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The tests run real processes and signals, and some assert deadlines the
// supervisor promises (a killed child is replaced within 1s, shutdown takes
// at most Grace + 1s), so they do not run in parallel.

func TestNewConfig(t *testing.T) {
	backlog := func(context.Context) (int64, error) { return 0, nil }
	cmd := []string{"true"}
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", cfg: Config{Command: cmd}, check: func(t *testing.T, c Config) {
			for _, f := range []struct {
				name      string
				got, want any
			}{
				{"Size", c.Size, runtime.NumCPU()},
				{"Grace", c.Grace, 10 * time.Second},
				{"MaxRestarts", c.MaxRestarts, 5},
				{"RestartWindow", c.RestartWindow, 10 * time.Second},
				{"BackoffMin", c.BackoffMin, 100 * time.Millisecond},
				{"BackoffMax", c.BackoffMax, 10 * time.Second},
				{"RecycleExitCode", c.RecycleExitCode, ExitRecycle},
				{"RSSInterval", c.RSSInterval, time.Second},
				{"ScaleInterval", c.ScaleInterval, time.Second},
				{"IdleTimeout", c.IdleTimeout, 5 * time.Second},
				{"Stdout", c.Stdout, any(os.Stdout)},
				{"Stderr", c.Stderr, any(os.Stderr)},
			} {
				if f.got != f.want {
					t.Errorf("%s: got %v, want %v", f.name, f.got, f.want)
				}
			}
			if c.Logger == nil {
				t.Error("Logger: got nil, want a discarding logger")
			}
		}},
		{name: "autoscale size defaults to Min", cfg: Config{Command: cmd, Min: 2, Max: 4, Backlog: backlog},
			check: func(t *testing.T, c Config) {
				if c.Size != 2 {
					t.Errorf("Size: got %d, want 2", c.Size)
				}
			}},
		{name: "autoscale Min defaults to 1, Size clamped to Max", cfg: Config{Command: cmd, Size: 9, Max: 4, Backlog: backlog},
			check: func(t *testing.T, c Config) {
				if c.Min != 1 || c.Size != 4 {
					t.Errorf("Min, Size: got %d, %d, want 1, 4", c.Min, c.Size)
				}
			}},
		{name: "no command", cfg: Config{}, wantErr: true},
		{name: "empty command", cfg: Config{Command: []string{""}}, wantErr: true},
		{name: "negative size", cfg: Config{Command: cmd, Size: -1}, wantErr: true},
		{name: "negative grace", cfg: Config{Command: cmd, Grace: -time.Second}, wantErr: true},
		{name: "min above max", cfg: Config{Command: cmd, Min: 5, Max: 4, Backlog: backlog}, wantErr: true},
		{name: "min without max", cfg: Config{Command: cmd, Min: 2}, wantErr: true},
		{name: "autoscale without backlog", cfg: Config{Command: cmd, Max: 4}, wantErr: true},
		{name: "until empty without backlog", cfg: Config{Command: cmd, UntilEmpty: true}, wantErr: true},
		{name: "structured output without logger", cfg: Config{Command: cmd, StructuredOutput: true}, wantErr: true},
		{name: "recycle code out of range", cfg: Config{Command: cmd, RecycleExitCode: 256}, wantErr: true},
		{name: "backoff max below min", cfg: Config{Command: cmd, BackoffMin: time.Second, BackoffMax: time.Millisecond}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("New: got error %v, want one wrapping ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: got error %v, want nil", err)
			}
			tt.check(t, s.cfg)
		})
	}
}

func TestBackoff(t *testing.T) {
	r := &runner{cfg: &Config{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}}
	for _, tt := range []struct {
		n        int
		min, max time.Duration
	}{
		{0, 100 * time.Millisecond, 150 * time.Millisecond},
		{1, 200 * time.Millisecond, 300 * time.Millisecond},
		{3, 800 * time.Millisecond, time.Second},
		{4, time.Second, time.Second},
		{100, time.Second, time.Second},
	} {
		for range 100 {
			if d := r.backoff(tt.n); d < tt.min || d > tt.max {
				t.Fatalf("backoff(%d): got %v, want in [%v, %v]", tt.n, d, tt.min, tt.max)
			}
		}
	}
}

// 1. N children with distinct PIDs, children of this process, each in its own
// process group, each with its index and the pool's PID in its environment.
func TestChildren(t *testing.T) {
	const n = 3
	tp := startPool(t, Config{Size: n}, "forever")
	cs := tp.waitChildren(t, n, 10*time.Second)
	waitFor(t, 10*time.Second, "children ready", func() bool { return len(recorded(t, tp.dir, "child")) == n })
	pids := map[int]bool{}
	for i, c := range cs {
		if c.Index != i {
			t.Errorf("child %d: got index %d, want %d", i, c.Index, i)
		}
		if pids[c.PID] {
			t.Errorf("child %d: PID %d is not distinct", i, c.PID)
		}
		pids[c.PID] = true
		st, err := procStat(c.PID)
		if err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		if st.ppid != os.Getpid() {
			t.Errorf("child %d: got ppid %d, want %d (the pool)", i, st.ppid, os.Getpid())
		}
		if st.pgrp != c.PID {
			t.Errorf("child %d: got process group %d, want %d (its own)", i, st.pgrp, c.PID)
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.PID))
		if err != nil {
			t.Fatal(err)
		}
		vars := strings.Split(string(env), "\x00")
		for _, want := range []string{
			EnvIndex + "=" + strconv.Itoa(i),
			EnvPoolPID + "=" + strconv.Itoa(os.Getpid()),
		} {
			if !slices.Contains(vars, want) {
				t.Errorf("child %d: environment lacks %s", i, want)
			}
		}
		if time.Since(c.Started) < 0 || time.Since(c.Started) > time.Minute {
			t.Errorf("child %d: got Started %v, want a recent time", i, c.Started)
		}
	}
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
	if cs := tp.Children(); len(cs) != 0 {
		t.Errorf("Children after Run: got %v, want none", cs)
	}
}

// 2. A child SIGKILLed is replaced within 1 s, with a new PID; its siblings
// are untouched.
func TestKilledChildIsReplaced(t *testing.T) {
	tp := startPool(t, Config{Size: 2}, "forever")
	before := tp.waitChildren(t, 2, 10*time.Second)
	if err := syscall.Kill(before[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var after []Child
	waitFor(t, time.Second, "child 0 to be replaced", func() bool {
		after = tp.Children()
		return len(after) == 2 && after[0].PID != before[0].PID
	})
	if after[1].PID != before[1].PID {
		t.Errorf("child 1: got PID %d, want %d (untouched)", after[1].PID, before[1].PID)
	}
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// 3. Children that exit 1 at once every time stop the pool with a restart
// storm within the window.
func TestRestartStorm(t *testing.T) {
	const window = 5 * time.Second
	start := time.Now()
	tp := startPool(t, Config{
		Size:          2,
		MaxRestarts:   3,
		RestartWindow: window,
		BackoffMin:    10 * time.Millisecond,
		BackoffMax:    50 * time.Millisecond,
	}, "exit1")
	err := tp.wait(t, window)
	if !errors.Is(err, ErrRestartStorm) {
		t.Fatalf("Run: got %v, want an error wrapping ErrRestartStorm", err)
	}
	t.Logf("storm after %v: %v", time.Since(start), err)
	want := regexp.MustCompile(`child [01] crashed 4 times within 5s \(MaxRestarts 3\); last: exit status 1`)
	if !want.MatchString(err.Error()) {
		t.Errorf("Run: got error %q, want it to match %q", err, want)
	}
	if cs := tp.Children(); len(cs) != 0 {
		t.Errorf("Children after Run: got %v, want none", cs)
	}
}

// A command that cannot start fails Run at once.
func TestStartFailure(t *testing.T) {
	s, err := New(Config{Size: 2, Command: []string{filepath.Join(t.TempDir(), "no-such-command")}})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(context.Background())
	if err == nil || errors.Is(err, ErrRestartStorm) || !strings.Contains(err.Error(), "no-such-command") {
		t.Errorf("Run: got %v, want a start error naming the command", err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Error("second Run: got nil, want an error")
	}
}

// 4. Graceful shutdown.
func TestShutdown(t *testing.T) {
	t.Run("children exit on SIGTERM", func(t *testing.T) {
		tp := startPool(t, Config{Size: 2, Grace: 5 * time.Second}, "forever")
		waitFor(t, 10*time.Second, "2 children ready", func() bool { return len(recorded(t, tp.dir, "child")) == 2 })
		if err := tp.stop(t); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		if left := tokenProcs(tp.token); len(left) > 0 {
			t.Errorf("processes alive after Run: got %v, want none", left)
		}
	})
	t.Run("children ignore SIGTERM", func(t *testing.T) {
		const grace = 500 * time.Millisecond
		tp := startPool(t, Config{Size: 2, Grace: grace}, "ignore-grandchild")
		waitFor(t, 10*time.Second, "2 children and 2 grandchildren ready", func() bool {
			return len(recorded(t, tp.dir, "child")) == 2 && len(recorded(t, tp.dir, "grandchild")) == 2
		})
		groups := recorded(t, tp.dir, "child")
		grandchildren := recorded(t, tp.dir, "grandchild")
		start := time.Now()
		tp.cancel()
		err := tp.wait(t, grace+time.Second)
		took := time.Since(start)
		t.Logf("Run returned after %v: %v", took, err)
		if !errors.Is(err, ErrGraceExpired) || !strings.Contains(err.Error(), "2 of 2 children") {
			t.Errorf("Run: got %v, want an error wrapping ErrGraceExpired saying 2 of 2 children were killed", err)
		}
		if took < grace {
			t.Errorf("Run returned after %v, want children killed at the end of grace %v, not before", took, grace)
		}
		if left := liveProcs(func(_ int, st stat) bool { return slices.Contains(groups, st.pgrp) }); len(left) > 0 {
			t.Errorf("processes alive in the children's groups %v: got %v, want none", groups, left)
		}
		for _, pid := range grandchildren {
			if alive(pid) {
				t.Errorf("grandchild %d: got alive, want dead", pid)
			}
		}
	})
}

// 5. When the pool process is SIGKILLed, its children get SIGTERM (the
// parent-death signal) and kill their group, grandchildren included.
func TestPoolKilled(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, token := t.TempDir(), newToken()
	t.Cleanup(func() { killToken(t, token) })
	logf, err := os.Create(filepath.Join(t.TempDir(), "pool.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	pool := exec.Command(exe)
	pool.Env = append(os.Environ(), envPool+"=1", envDir+"="+dir, envToken+"="+token)
	pool.Stdout, pool.Stderr = logf, logf
	if err := pool.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = pool.Process.Kill()
			_ = pool.Wait()
		}
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("pool output:\n%s", out)
		}
	})
	waitFor(t, 10*time.Second, "2 children and 2 grandchildren ready", func() bool {
		return len(recorded(t, dir, "child")) == 2 && len(recorded(t, dir, "grandchild")) == 2
	})
	pids := append(recorded(t, dir, "child"), recorded(t, dir, "grandchild")...)
	if err := pool.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = pool.Wait()
	reaped = true
	waitFor(t, time.Second, "children and grandchildren to die", func() bool {
		return !slices.ContainsFunc(pids, alive)
	})
	if left := tokenProcs(token); len(left) > 0 {
		t.Errorf("processes alive after the pool was killed: got %v, want none", left)
	}
}

// 6. Children exiting with RecycleExitCode are replaced at once and never
// trip the restart-storm limit.
func TestRecycle(t *testing.T) {
	const want = 20
	tp := startPool(t, Config{Size: 2, MaxRestarts: 5, RestartWindow: time.Minute}, "recycle", envMs+"=50")
	waitFor(t, 30*time.Second, fmt.Sprintf("%d children started", want), func() bool {
		tp.assertRunning(t)
		return len(recorded(t, tp.dir, "child")) >= want
	})
	tp.assertRunning(t)
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// 7. Autoscaling between 1 and 4 follows the backlog.
func TestAutoscale(t *testing.T) {
	var backlog atomic.Int64
	tp := startPool(t, Config{
		Min:           1,
		Max:           4,
		ScaleInterval: 20 * time.Millisecond,
		IdleTimeout:   200 * time.Millisecond,
		Backlog:       func(context.Context) (int64, error) { return backlog.Load(), nil },
	}, "forever")
	tp.waitChildren(t, 1, 10*time.Second)

	most := 0
	count := func(n int) func() bool {
		return func() bool {
			cs := tp.Children()
			most = max(most, len(cs))
			return len(cs) == n
		}
	}
	backlog.Store(100)
	waitFor(t, 20*time.Second, "growth to 4 children", count(4))
	// Scaling down stops a child with SIGTERM even if it has not yet set up
	// its signal handling, which kills it before it records itself. Let the
	// 4 children get ready before the backlog drops, so that each records
	// itself exactly once and "children started" below counts every process
	// the pool ran, however long a start takes on a loaded machine.
	waitFor(t, 20*time.Second, "4 children ready", func() bool {
		count(4)()
		return len(recorded(t, tp.dir, "child")) == 4
	})
	backlog.Store(0)
	waitFor(t, 20*time.Second, "shrinking to 1 child", count(1))
	if most > 4 {
		t.Errorf("children: got up to %d, want at most 4", most)
	}
	if cs := tp.Children(); len(cs) != 1 || cs[0].Index != 0 {
		t.Errorf("remaining children: got %v, want child 0 only", cs)
	}
	if got := len(recorded(t, tp.dir, "child")); got != 4 {
		t.Errorf("children started: got %d, want 4 (none restarted)", got)
	}
	if n := tp.Restarts(); n != 0 {
		t.Errorf("restarts: got %d, want 0", n)
	}
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// 8. UntilEmpty: the pool closes and joins once the backlog is empty.
func TestUntilEmpty(t *testing.T) {
	t.Run("backlog empty", func(t *testing.T) {
		var backlog atomic.Int64
		backlog.Store(3)
		tp := startPool(t, Config{
			Size:          2,
			UntilEmpty:    true,
			ScaleInterval: 20 * time.Millisecond,
			Backlog:       func(context.Context) (int64, error) { return backlog.Load(), nil },
		}, "forever")
		waitFor(t, 10*time.Second, "2 children ready", func() bool { return len(recorded(t, tp.dir, "child")) == 2 })
		backlog.Store(0)
		if err := tp.wait(t, 10*time.Second); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		if got := len(recorded(t, tp.dir, "child")); got != 2 {
			t.Errorf("children started: got %d, want 2 (none restarted)", got)
		}
	})
	t.Run("children done", func(t *testing.T) {
		tp := startPool(t, Config{
			Size:       2,
			UntilEmpty: true,
			Backlog:    func(context.Context) (int64, error) { return 1, nil },
		}, "exit0")
		if err := tp.wait(t, 10*time.Second); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		if got := len(recorded(t, tp.dir, "child")); got != 2 {
			t.Errorf("children started: got %d, want 2 (none restarted)", got)
		}
	})
}

// 9. A child above MaxRSS is replaced, which is not a crash.
func TestMaxRSS(t *testing.T) {
	tp := startPool(t, Config{
		Size:        1,
		MaxRSS:      100 << 20,
		RSSInterval: 20 * time.Millisecond,
		MaxRestarts: 1, // two crashes would stop the pool
	}, "alloc", envMB+"=200")
	waitFor(t, 30*time.Second, "3 children started", func() bool {
		tp.assertRunning(t)
		return len(recorded(t, tp.dir, "child")) >= 3
	})
	tp.assertRunning(t)
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// 10. Children's output lines are prefixed with "[index pid] ", or written
// as log records with StructuredOutput.
func TestOutput(t *testing.T) {
	t.Run("prefixed", func(t *testing.T) {
		var stdout, stderr syncBuffer
		tp := startPool(t, Config{Size: 2, Stdout: &stdout, Stderr: &stderr}, "print")
		cs := tp.waitChildren(t, 2, 10*time.Second)
		waitFor(t, 10*time.Second, "2 children ready", func() bool { return len(recorded(t, tp.dir, "child")) == 2 })
		if err := tp.stop(t); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		for _, c := range cs {
			p := fmt.Sprintf("[%d %d] ", c.Index, c.PID)
			for _, want := range []string{p + "line one\n", p + "line two\n", p + "partial\n"} {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout: got %q, want it to contain %q", stdout.String(), want)
				}
			}
			if want := p + "oops\n"; !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr: got %q, want it to contain %q", stderr.String(), want)
			}
		}
	})
	t.Run("structured", func(t *testing.T) {
		var logs syncBuffer
		tp := startPool(t, Config{
			Size:             1,
			StructuredOutput: true,
			Logger:           slog.New(slog.NewJSONHandler(&logs, nil)),
		}, "print")
		cs := tp.waitChildren(t, 1, 10*time.Second)
		waitFor(t, 10*time.Second, "child ready", func() bool { return len(recorded(t, tp.dir, "child")) == 1 })
		if err := tp.stop(t); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		type record struct {
			Msg    string `json:"msg"`
			Child  *int   `json:"child"`
			PID    int    `json:"pid"`
			Stream string `json:"stream"`
		}
		var got []record
		for line := range strings.Lines(logs.String()) {
			var r record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			if r.Stream != "" {
				got = append(got, r)
			}
		}
		zero := 0
		for _, want := range []record{
			{"line one", &zero, cs[0].PID, "stdout"},
			{"line two", &zero, cs[0].PID, "stdout"},
			{"partial", &zero, cs[0].PID, "stdout"},
			{"oops", &zero, cs[0].PID, "stderr"},
		} {
			if !slices.ContainsFunc(got, func(r record) bool {
				return r.Msg == want.Msg && r.Child != nil && *r.Child == 0 && r.PID == want.PID && r.Stream == want.Stream
			}) {
				t.Errorf("output records: got %+v, want one like msg=%q child=0 pid=%d stream=%s",
					got, want.Msg, want.PID, want.Stream)
			}
		}
	})
}

func TestCPUShare(t *testing.T) {
	cpus := runtime.GOMAXPROCS(0)
	for _, c := range []struct{ n, want int }{
		{1, cpus},
		{cpus, 1},
		{2 * cpus, 1}, // never 0
		{0, cpus},     // no children yet: all of them
	} {
		if got := CPUShare(c.n); got != c.want {
			t.Errorf("CPUShare(%d) with %d CPUs = %d, want %d", c.n, cpus, got, c.want)
		}
	}
	if cpus >= 2 {
		if got := CPUShare(2); got != cpus/2 {
			t.Errorf("CPUShare(2) with %d CPUs = %d, want %d", cpus, got, cpus/2)
		}
	}
}
