//go:build linux

package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
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
			t.Helper()
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
				{"OrphanGrace", c.OrphanGrace, 200 * time.Millisecond},
				{"ReapAll", c.ReapAll, false},
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
				t.Helper()
				if c.Size != 2 {
					t.Errorf("Size: got %d, want 2", c.Size)
				}
			}},
		{name: "autoscale Min defaults to 1, Size clamped to Max", cfg: Config{Command: cmd, Size: 9, Max: 4, Backlog: backlog},
			check: func(t *testing.T, c Config) {
				t.Helper()
				if c.Min != 1 || c.Size != 4 {
					t.Errorf("Min, Size: got %d, %d, want 1, 4", c.Min, c.Size)
				}
			}},
		{name: "no command", cfg: Config{}, wantErr: true},
		{name: "empty command", cfg: Config{Command: []string{""}}, wantErr: true},
		{name: "negative size", cfg: Config{Command: cmd, Size: -1}, wantErr: true},
		{name: "negative grace", cfg: Config{Command: cmd, Grace: -time.Second}, wantErr: true},
		{name: "negative orphan grace", cfg: Config{Command: cmd, OrphanGrace: -time.Second}, wantErr: true},
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
			EnvRestarts + "=0",
			EnvReadyFD + "=3",
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

// 3. Children that fail to start (exit before they are ready) trip the
// restart-storm limit within the window, with an error naming the child,
// the count, the window and the last exit status: an exit code, or a
// signal the child brought on itself.
func TestRestartStorm(t *testing.T) {
	const window = 5 * time.Second
	for _, tt := range []struct {
		name string
		mode string
		env  []string
		last string
	}{
		{"exit 1", "exit1", nil, `exit status 1`},
		{"panic", "panic", nil, `exit status 2`},
		{"panic, GOTRACEBACK=crash", "panic", []string{"GOTRACEBACK=crash"}, `signal: aborted`},
		{"exit 1 after Ready was not called", "crash", []string{envMs + "=200"}, `exit status 1`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			tp := startPool(t, Config{
				Size:          2,
				MaxRestarts:   3,
				RestartWindow: window,
				BackoffMin:    10 * time.Millisecond,
				BackoffMax:    50 * time.Millisecond,
				Stderr:        io.Discard, // the panics' stacks
			}, tt.mode, tt.env...)
			err := tp.wait(t, window+5*time.Second)
			if !errors.Is(err, ErrRestartStorm) {
				t.Fatalf("Run: got %v, want an error wrapping ErrRestartStorm", err)
			}
			t.Logf("storm after %v: %v", time.Since(start), err)
			want := regexp.MustCompile(`child [01] failed to start 4 times in a row within 5s \(MaxRestarts 3\): ` +
				`each time it exited before it was ready; last: ` + tt.last + `( \(core dumped\))?$`)
			if !want.MatchString(err.Error()) {
				t.Errorf("Run: got error %q, want it to match %q", err, want)
			}
			if cs := tp.Children(); len(cs) != 0 {
				t.Errorf("Children after Run: got %v, want none", cs)
			}
		})
	}
}

// A child that crashes again and again once it is ready (a task that
// crashes its worker) never stops the pool, however low MaxRestarts, and
// each restart comes after BackoffMin: the back-off starts over at every
// ready child.
func TestCrashAfterReady(t *testing.T) {
	const restarts = 15
	logs := &syncBuffer{}
	start := time.Now()
	tp := startPool(t, Config{
		Size:          2,
		MaxRestarts:   2,
		RestartWindow: time.Minute,
		BackoffMin:    50 * time.Millisecond,
		BackoffMax:    5 * time.Second,
		Logger:        jsonLogger(t, logs),
	}, "crash", envReady+"=1", envMs+"=20")
	waitFor(t, 60*time.Second, fmt.Sprintf("%d restarts", restarts), func() bool {
		tp.assertRunning(t)
		return tp.Restarts() >= restarts
	})
	tp.assertRunning(t)
	took := time.Since(start)
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
	crashes := logRecords(t, logs, "child crashed, restarting")
	delays := make([]time.Duration, len(crashes))
	for i, r := range crashes {
		delays[i] = r.Delay
	}
	t.Logf("%d restarts in %v, %d children started, delays %v", tp.Restarts(), took.Round(time.Millisecond),
		len(recorded(t, tp.dir, "child")), delays)
	if len(crashes) < restarts {
		t.Errorf("crash records: got %d, want at least %d", len(crashes), restarts)
	}
	for _, d := range delays {
		if d > 75*time.Millisecond {
			t.Errorf("restart delay: got %v, want at most BackoffMin + 50%% = 75ms (back-off reset by readiness)", d)
		}
	}
	if n := len(logRecords(t, logs, "child failed to start, restarting")); n != 0 {
		t.Errorf("failures to start: got %d, want 0 (every child was ready)", n)
	}
}

// The restart delay starts over at BackoffMin once a child is ready,
// whether it said so or ran for ReadyTimeout; it grows while a child fails
// to start.
func TestBackoffResetsWhenReady(t *testing.T) {
	const restarts = 6
	for _, tt := range []struct {
		name  string
		cfg   Config
		env   []string
		reset bool
	}{
		{"ready signalled", Config{}, []string{envReady + "=1", envMs + "=20"}, true},
		{"ready after ReadyTimeout", Config{ReadyTimeout: 100 * time.Millisecond}, []string{envMs + "=500"}, true},
		{"never ready", Config{}, []string{envMs + "=20"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncBuffer{}
			cfg := tt.cfg
			cfg.Size = 1
			cfg.MaxRestarts = 100
			cfg.RestartWindow = time.Minute
			cfg.BackoffMin = 20 * time.Millisecond
			cfg.BackoffMax = 2 * time.Second
			cfg.Logger = jsonLogger(t, logs)
			tp := startPool(t, cfg, "crash", tt.env...)
			waitFor(t, 60*time.Second, fmt.Sprintf("%d restarts", restarts), func() bool {
				tp.assertRunning(t)
				return tp.Restarts() >= restarts
			})
			if err := tp.stop(t); err != nil {
				t.Errorf("Run: got %v, want nil", err)
			}
			var delays []time.Duration
			for _, msg := range []string{"child crashed, restarting", "child failed to start, restarting"} {
				for _, r := range logRecords(t, logs, msg) {
					delays = append(delays, r.Delay)
				}
			}
			t.Logf("restart delays: %v", delays)
			if len(delays) < restarts {
				t.Fatalf("restart records: got %d, want at least %d", len(delays), restarts)
			}
			longest := slices.Max(delays)
			if tt.reset && longest > 30*time.Millisecond {
				t.Errorf("longest restart delay: got %v, want at most BackoffMin + 50%% = 30ms", longest)
			}
			if !tt.reset && longest < 320*time.Millisecond {
				t.Errorf("longest restart delay: got %v, want at least 320ms (20ms doubled at each of %d failures)", longest, restarts)
			}
		})
	}
}

// A child SIGKILLed from outside, whether ready or not, is restarted and
// never counted toward a restart storm: six kills of one child within the
// window used to stop the pool.
func TestKillsDoNotStopPool(t *testing.T) {
	const kills = 8
	for _, tt := range []struct {
		name  string
		mode  string
		ready bool // wait for the child to be ready before each kill
	}{
		{"ready", "ready", true},
		{"not ready", "forever", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tp := startPool(t, Config{
				Size:          2,
				MaxRestarts:   2,
				RestartWindow: time.Minute,
				ReadyTimeout:  time.Minute,
				BackoffMin:    10 * time.Millisecond,
				BackoffMax:    100 * time.Millisecond,
			}, tt.mode)
			start := time.Now()
			for i := range kills {
				var c Child
				waitFor(t, 20*time.Second, "child 0 to run", func() bool {
					tp.assertRunning(t)
					cs := tp.Children()
					if len(cs) == 0 || cs[0].Index != 0 || (tt.ready && !cs[0].Ready) {
						return false
					}
					c = cs[0]
					return true
				})
				if c.Ready != tt.ready {
					t.Fatalf("kill %d: child 0 ready %v, want %v", i, c.Ready, tt.ready)
				}
				if err := syscall.Kill(c.PID, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 20*time.Second, "child 0 to be replaced", func() bool {
					tp.assertRunning(t)
					cs := tp.Children()
					return len(cs) > 0 && cs[0].Index == 0 && cs[0].PID != c.PID
				})
			}
			t.Logf("%d kills of child 0 in %v; restarts %d", kills, time.Since(start).Round(time.Millisecond), tp.Restarts())
			tp.assertRunning(t)
			if n := tp.Restarts(); n != kills {
				t.Errorf("restarts: got %d, want %d", n, kills)
			}
			if err := tp.stop(t); err != nil {
				t.Errorf("Run: got %v, want nil", err)
			}
		})
	}
}

// Child.Ready is false until the child calls Ready, or until it has run for
// ReadyTimeout if it never does. Ready writes once, closes the descriptor
// and clears EnvReadyFD (the "ready" child checks a second call).
func TestReady(t *testing.T) {
	t.Run("signalled", func(t *testing.T) {
		tp := startPool(t, Config{Size: 1, ReadyTimeout: time.Minute}, "ready", envMs+"=300")
		first := tp.waitChildren(t, 1, 10*time.Second)[0]
		if first.Ready && time.Since(first.Started) < 300*time.Millisecond {
			t.Errorf("child 0: got Ready before it called Ready")
		}
		waitFor(t, 20*time.Second, "child 0 ready", func() bool {
			cs := tp.Children()
			return len(cs) == 1 && cs[0].Ready
		})
		waitFor(t, 10*time.Second, "child 0 checked its second Ready", func() bool { return len(recorded(t, tp.dir, "ready")) == 1 })
		if cs := tp.Children(); len(cs) != 1 || cs[0].PID != first.PID || tp.Restarts() != 0 {
			t.Errorf("children %v, restarts %d: want the first child still running", cs, tp.Restarts())
		}
		if err := tp.stop(t); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	})
	t.Run("after ReadyTimeout", func(t *testing.T) {
		const timeout = 500 * time.Millisecond
		tp := startPool(t, Config{Size: 1, ReadyTimeout: timeout}, "forever")
		cs := tp.waitChildren(t, 1, 10*time.Second)
		var readyAt time.Time
		waitFor(t, 20*time.Second, "child 0 ready", func() bool {
			cs := tp.Children()
			readyAt = time.Now()
			return len(cs) == 1 && cs[0].Ready
		})
		after := readyAt.Sub(cs[0].Started)
		t.Logf("deemed ready %v after its start", after.Round(time.Millisecond))
		if after < timeout {
			t.Errorf("child 0 ready after %v, want after ReadyTimeout %v", after, timeout)
		}
		if err := tp.stop(t); err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	})
}

// signalReady, as Ready calls it once per process: a no-op without
// EnvReadyFD, a clear error for a descriptor that is not a pipe (which it
// leaves open), and one byte written to a pipe, which it closes.
func TestSignalReady(t *testing.T) {
	t.Run("unset", func(t *testing.T) {
		t.Setenv(EnvReadyFD, "")
		if err := os.Unsetenv(EnvReadyFD); err != nil {
			t.Fatal(err)
		}
		if err := signalReady(); err != nil {
			t.Errorf("signalReady: got %v, want nil", err)
		}
	})
	for _, v := range []string{"x", "-1", "2"} {
		t.Run("value "+v, func(t *testing.T) {
			t.Setenv(EnvReadyFD, v)
			err := signalReady()
			if err == nil || !strings.Contains(err.Error(), EnvReadyFD) {
				t.Errorf("signalReady: got %v, want an error naming %s", err, EnvReadyFD)
			}
		})
	}
	t.Run("regular file", func(t *testing.T) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		t.Setenv(EnvReadyFD, strconv.Itoa(int(f.Fd())))
		if err := signalReady(); err == nil || !strings.Contains(err.Error(), "not a pipe") {
			t.Errorf("signalReady: got %v, want an error saying it is not a pipe", err)
		}
		if _, err := f.Stat(); err != nil {
			t.Errorf("the file after signalReady: %v, want it still open", err)
		}
		if b, _ := os.ReadFile(f.Name()); len(b) != 0 {
			t.Errorf("the file: got %q written, want nothing", b)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		var p [2]int
		if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(p[0])
		t.Setenv(EnvReadyFD, strconv.Itoa(p[1]))
		if err := signalReady(); err != nil {
			t.Fatalf("signalReady: got %v, want nil", err)
		}
		if v, ok := os.LookupEnv(EnvReadyFD); ok {
			t.Errorf("%s after signalReady: got %q, want it unset", EnvReadyFD, v)
		}
		buf := make([]byte, 8)
		n, err := syscall.Read(p[0], buf)
		if n != 1 || err != nil {
			t.Errorf("read: got %d bytes, %v, want 1 byte", n, err)
		}
		if n, err := syscall.Read(p[0], buf); n != 0 || err != nil {
			t.Errorf("read: got %d bytes, %v, want end of file (the write end closed)", n, err)
		}
	})
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

// 6. Children exiting with RecycleExitCode, before or after they are
// ready, are replaced at once (not after a back-off) and never trip the
// restart-storm limit. One not ready yet is replaced at once as long as it
// ran for its restart delay (here BackoffMin 20ms, runs of 50ms); see
// TestRecycleAtOnce for one that does not.
func TestRecycle(t *testing.T) {
	const want = 20
	for _, tt := range []struct {
		name       string
		env        []string
		backoffMin time.Duration
	}{
		{"not ready", nil, 20 * time.Millisecond},
		{"ready", []string{envReady + "=1"}, 5 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncBuffer{}
			start := time.Now()
			tp := startPool(t, Config{
				Size:          2,
				MaxRestarts:   1,
				RestartWindow: time.Minute,
				ReadyTimeout:  time.Minute,
				BackoffMin:    tt.backoffMin,
				BackoffMax:    5 * time.Second, // a restart after a growing back-off would stall the test
				Logger:        jsonLogger(t, logs),
			}, "recycle", append(tt.env, envMs+"=50")...)
			waitFor(t, 30*time.Second, fmt.Sprintf("%d children started", want), func() bool {
				tp.assertRunning(t)
				return len(recorded(t, tp.dir, "child")) >= want
			})
			tp.assertRunning(t)
			t.Logf("%d children started in %v; recycles %d, restarts %d", len(recorded(t, tp.dir, "child")),
				time.Since(start).Round(time.Millisecond), tp.Recycles(), tp.Restarts())
			if err := tp.stop(t); err != nil {
				t.Errorf("Run: got %v, want nil", err)
			}
			if n := tp.Restarts(); n != 0 {
				t.Errorf("restarts after a back-off: got %d, want 0", n)
			}
			if n := len(logRecords(t, logs, "child asked to be recycled, replacing it")); n < want-2 {
				t.Errorf("recycle records: got %d, want at least %d", n, want-2)
			}
			if n := len(logRecords(t, logs, msgRecycleDelayed)); n != 0 {
				t.Errorf("recycles after a back-off: got %d, want 0", n)
			}
		})
	}
}

const msgRecycleDelayed = "child asked to be recycled before it was ready, replacing it after its back-off"

// A child that exits with RecycleExitCode at once every time, before it is
// ready, is not restarted in a tight loop: each time sooner than its
// restart delay after its start, it waits out the rest of that delay,
// which doubles (100ms, 200ms, ... up to BackoffMax 800ms). Nor does it
// trip the restart-storm limit. Once it runs long enough to be ready, a
// recycle is at once again (TestRecycle).
func TestRecycleAtOnce(t *testing.T) {
	const run = 3 * time.Second
	logs := &syncBuffer{}
	tp := startPool(t, Config{
		Size:          1,
		MaxRestarts:   1,
		RestartWindow: time.Minute,
		ReadyTimeout:  time.Minute,
		BackoffMin:    100 * time.Millisecond,
		BackoffMax:    800 * time.Millisecond,
		Logger:        jsonLogger(t, logs),
	}, "recycle", envMs+"=0")
	time.Sleep(run)
	tp.assertRunning(t)
	starts := len(recorded(t, tp.dir, "child"))
	delayed := logRecords(t, logs, msgRecycleDelayed)
	var delays []string
	for _, r := range delayed {
		delays = append(delays, r.Delay.Round(time.Millisecond).String())
	}
	t.Logf("in %v: %d starts, %d recycles, delays %v", run, starts, tp.Recycles(), delays)
	// 100-150, 200-300, 400-600, then 800ms each: 6 to 8 starts in 3s;
	// without the guard, one every few milliseconds.
	if starts < 3 || starts > 10 {
		t.Errorf("starts in %v: got %d, want 3 to 10 (restart delays 100ms doubling to 800ms)", run, starts)
	}
	// Every start but the last ends in a recycle, at once or delayed. One
	// at once is right only for a child that lived at least the least
	// restart delay: on a loaded machine a child can take that long to
	// start and exit, and the test must not take that for a defect.
	immediate := logRecords(t, logs, "child asked to be recycled, replacing it")
	if n := len(delayed) + len(immediate); n < starts-2 {
		t.Errorf("recycle records: got %d (%d delayed), want at least %d", n, len(delayed), starts-2)
	}
	for _, r := range immediate {
		if r.Ran < 100*time.Millisecond {
			t.Errorf("child %d recycled at once after %v, sooner than the least restart delay (100ms)", r.Child, r.Ran)
		}
	}
	if err := tp.stop(t); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
	if n := tp.Restarts(); n != 0 {
		t.Errorf("restarts counted as crashes: got %d, want 0", n)
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
			for _, want := range []string{p + "oops\n", p + childJSONRecord + "\n", p + childBrokenJSON + "\n"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr: got %q, want it to contain %q", stderr.String(), want)
				}
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
			{childBrokenJSON, &zero, cs[0].PID, "stderr"},
		} {
			if !slices.ContainsFunc(got, func(r record) bool {
				return r.Msg == want.Msg && r.Child != nil && *r.Child == 0 && r.PID == want.PID && r.Stream == want.Stream
			}) {
				t.Errorf("output records: got %+v, want one like msg=%q child=0 pid=%d stream=%s",
					got, want.Msg, want.PID, want.Stream)
			}
		}
		// The child's JSON record is a record of its own: its level,
		// time, message and fields, plus child and pid.
		var found bool
		for line := range strings.Lines(logs.String()) {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			if m["msg"] != "task failed" {
				continue
			}
			found = true
			if n := strings.Count(line, `"pid":`); n != 1 {
				t.Errorf("the child's JSON record %s has %d pid fields, want 1", line, n)
			}
			want := map[string]any{
				"time": "2026-01-02T03:04:05.123Z", "level": "ERROR", "msg": "task failed",
				"task": "t1", "attempt": 3.0, "took": "1.5s", "err": map[string]any{"code": "boom"},
				"child": 0.0, "pid": float64(cs[0].PID),
			}
			if !reflect.DeepEqual(m, want) {
				t.Errorf("the child's JSON record became %v, want %v", m, want)
			}
		}
		if !found {
			t.Errorf("no record of the child's JSON line %s in:\n%s", childJSONRecord, logs.String())
		}
	})
}

// A child's log line in JSON, and a line that looks like one but is not.
const (
	childJSONRecord = `{"time":"2026-01-02T03:04:05.123Z","level":"ERROR","msg":"task failed","task":"t1","pid":1,"attempt":3,"took":"1.5s","err":{"code":"boom"}}`
	childBrokenJSON = `{"level":"ERROR","msg":"cut short`
)

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

// jsonLogger returns a logger writing JSON records to buf and to the test's
// output.
func jsonLogger(t *testing.T, buf *syncBuffer) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewJSONHandler(io.MultiWriter(buf, t.Output()), nil))
}

// logRecord holds the fields of the supervisor's log records that tests
// read.
type logRecord struct {
	Msg    string        `json:"msg"`
	Child  int           `json:"child"`
	Status string        `json:"status"`
	Delay  time.Duration `json:"delay"` // slog writes a Duration as nanoseconds
	Ran    time.Duration `json:"ran"`
}

// logRecords returns the records of buf, written by jsonLogger, whose
// message is msg.
func logRecords(t *testing.T, buf *syncBuffer, msg string) []logRecord {
	t.Helper()
	var out []logRecord
	for line := range strings.Lines(buf.String()) {
		var r logRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}
