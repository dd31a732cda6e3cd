//go:build linux

package pool

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the child program and as a pool process, chosen
// by these environment variables.
const (
	envChild = "POOL_TEST_CHILD" // child mode, see runChild
	envPool  = "POOL_TEST_POOL"  // if set: run a Supervisor of "grandchild" children, see runPool
	envDir   = "POOL_TEST_DIR"   // where children record their PIDs
	envToken = "POOL_TEST_TOKEN" // marks every process a test starts, to find leftovers
	envMs    = "POOL_TEST_MS"    // mode recycle: run time before exiting ExitRecycle
	envMB    = "POOL_TEST_MB"    // mode alloc: MiB to allocate
	envReady = "POOL_TEST_READY" // if set: call Ready first (modes recycle, crash)
)

// noRaceExitSleep stops a child built with -race from sleeping 1s at exit.
const noRaceExitSleep = "GORACE=atexit_sleep_ms=0"

func TestMain(m *testing.M) {
	if mode := os.Getenv(envChild); mode != "" {
		os.Exit(runChild(mode))
	}
	if os.Getenv(envPool) != "" {
		os.Exit(runPool())
	}
	goleak.VerifyTestMain(m)
}

// runChild is the child program. It records its PID (and its grandchild's)
// as empty files "child-<pid>" ("grandchild-<pid>") in $POOL_TEST_DIR once
// it is ready, that is once its signal handling is in place.
func runChild(mode string) int {
	for _, run := range []func(mode string) (code int, ok bool){signalModes, orphanModes, lifeModes} {
		if code, ok := run(mode); ok {
			return code
		}
	}
	fmt.Fprintf(os.Stderr, "unknown %s %q\n", envChild, mode)
	return 2
}

// signalModes are the children that show how the pool's signals reach
// them and their groups. ok is false for another mode.
func signalModes(mode string) (code int, ok bool) {
	term := make(chan os.Signal, 1)
	switch mode {
	case "forever": // run until SIGTERM, then exit 0
		signal.Notify(term, syscall.SIGTERM)
		recordPID("child", os.Getpid())
		<-term
		return 0, true
	case "exit0":
		recordPID("child", os.Getpid())
		return 0, true
	case "exit1":
		return 1, true
	case "ignore": // ignore SIGTERM
		signal.Ignore(syscall.SIGTERM)
		recordPID("child", os.Getpid())
		sleepForever()
	case "ignore-grandchild": // ignore SIGTERM, with a grandchild in our group
		signal.Ignore(syscall.SIGTERM)
		startGrandchild()
		recordPID("child", os.Getpid())
		sleepForever()
	case "grandchild": // a grandchild in our group; on SIGTERM, kill our group, as forq workers do
		signal.Notify(term, syscall.SIGTERM)
		startGrandchild()
		recordPID("child", os.Getpid())
		<-term
		_ = syscall.Kill(-syscall.Getpgrp(), syscall.SIGKILL)
		sleepForever()
	}
	return 0, false
}

// orphanModes are the children that leave processes behind, as exec tasks
// can. ok is false for another mode.
func orphanModes(mode string) (code int, ok bool) {
	scripts := map[string]string{
		// an exec-task-like command whose shell and its child ignore SIGTERM
		"orphan": `trap '' TERM; sleep 1000 & echo $! > "$0"; wait`,
		// a shell that exits at once, leaving a 1.5s sleep
		"orphan-alive": `sleep 1.5 & echo $! > "$0"`,
		// idem, the sleep in a session of its own
		"orphan-setsid": `setsid sleep 1.5 & echo $! > "$0"`,
	}
	script, ok := scripts[mode]
	if !ok {
		return 0, false
	}
	// Each runs until SIGTERM, then exits 0.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	startCommand(script)
	recordPID("child", os.Getpid())
	<-term
	return 0, true
}

// lifeModes are the children that test readiness, exits, output and
// memory. ok is false for another mode.
func lifeModes(mode string) (code int, ok bool) {
	term := make(chan os.Signal, 1)
	switch mode {
	case "recycle": // exit ExitRecycle after $POOL_TEST_MS ms
		readyIf()
		recordPID("child", os.Getpid())
		sleepMs()
		return ExitRecycle, true
	case "crash": // exit 1 after $POOL_TEST_MS ms
		readyIf()
		recordPID("child", os.Getpid())
		sleepMs()
		return 1, true
	case "panic": // panic at once (with GOTRACEBACK=crash: die by SIGABRT)
		recordPID("child", os.Getpid())
		_ = syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{}) // no core file
		panic("test child panics")
	case "ready": // call Ready after $POOL_TEST_MS ms, then run until SIGTERM
		signal.Notify(term, syscall.SIGTERM)
		recordPID("child", os.Getpid())
		sleepMs()
		if code := readyTwice(); code != 0 {
			return code, true
		}
		recordPID("ready", os.Getpid())
		<-term
		return 0, true
	case "print": // print lines, then run until SIGTERM
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("line one")
		fmt.Println("line two")
		fmt.Fprintln(os.Stderr, "oops")
		fmt.Fprintln(os.Stderr, childJSONRecord)
		fmt.Fprintln(os.Stderr, childBrokenJSON)
		fmt.Print("partial")
		recordPID("child", os.Getpid())
		<-term
		return 0, true
	case "alloc": // hold $POOL_TEST_MB MiB of resident memory until SIGTERM
		signal.Notify(term, syscall.SIGTERM)
		mb, _ := strconv.Atoi(os.Getenv(envMB))
		b := make([]byte, mb<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		recordPID("child", os.Getpid())
		<-term
		return int(b[0]) - 1, true // 0, and keeps b alive
	}
	return 0, false
}

// readyTwice calls Ready, then again: a second call must be harmless (no
// write to a closed or reused descriptor, the first call's result). It
// returns the child's exit code on a failure, else 0.
func readyTwice() int {
	if err := Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	_, fdErr := unix.FcntlInt(readyFD, unix.F_GETFD, 0)
	if err := Ready(); err != nil || os.Getenv(EnvReadyFD) != "" || fdErr == nil {
		fmt.Fprintf(os.Stderr, "after Ready: second call %v, %s=%q, fd %d open: %v\n",
			err, EnvReadyFD, os.Getenv(EnvReadyFD), readyFD, fdErr == nil)
		return 3
	}
	return 0
}

// recordPID writes the empty file "<kind>-<pid>" (holding the child's pool
// index) into $POOL_TEST_DIR.
func recordPID(kind string, pid int) {
	name := filepath.Join(os.Getenv(envDir), kind+"-"+strconv.Itoa(pid))
	if err := os.WriteFile(name, []byte(os.Getenv(EnvIndex)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// startGrandchild starts a sleep in this process's group and records it.
func startGrandchild() {
	cmd := exec.Command("sleep", "1000") // in our process group
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	recordPID("grandchild", cmd.Process.Pid)
}

// startCommand runs script as consumer.execHandler runs an exec task:
// sh in a process group of its own, with SIGKILL as its parent-death
// signal. It records the shell as "command-<pid>" and the PID the script
// writes to the file named by $0 as "orphan-<pid>".
func startCommand(script string) {
	runtime.LockOSThread() // for the parent-death signal; never unlocked
	pidFile := filepath.Join(os.Getenv(envDir), "pid-"+strconv.Itoa(os.Getpid()))
	cmd := exec.Command("sh", "-c", script, pidFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	go func() { _ = cmd.Wait() }()
	recordPID("command", cmd.Process.Pid)
	for {
		b, err := os.ReadFile(pidFile)
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil {
			recordPID("orphan", pid)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readyIf calls Ready if $POOL_TEST_READY is set.
func readyIf() {
	if os.Getenv(envReady) == "" {
		return
	}
	if err := Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
}

// sleepMs sleeps $POOL_TEST_MS milliseconds.
func sleepMs() {
	ms, _ := strconv.Atoi(os.Getenv(envMs))
	time.Sleep(time.Duration(ms) * time.Millisecond)
}

// runPool runs a pool of two "grandchild" children until it is killed.
func runPool() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := New(Config{
		Size:    2,
		Command: []string{exe},
		Env: []string{
			envChild + "=grandchild",
			envDir + "=" + os.Getenv(envDir),
			envToken + "=" + os.Getenv(envToken),
			noRaceExitSleep,
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := s.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testPool is a Supervisor running in a test, with the directory where its
// children record their PIDs.
type testPool struct {
	*Supervisor
	dir    string
	token  string
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // what Run returned, once done is closed
}

var tokens atomic.Int64

// newToken returns a string unique to this test process and call, put in
// the environment of every process a test starts.
func newToken() string {
	return strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(tokens.Add(1), 10)
}

// startPool runs a Supervisor of cfg whose children are this test binary in
// the given child mode. Cleanup stops the pool and kills any process left.
func startPool(t *testing.T, cfg Config, mode string, env ...string) *testPool {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tp := &testPool{dir: t.TempDir(), token: newToken(), done: make(chan struct{})}
	cfg.Command = []string{exe}
	cfg.Env = slices.Concat(env, []string{envChild + "=" + mode, envDir + "=" + tp.dir, envToken + "=" + tp.token, noRaceExitSleep})
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	if cfg.Stdout == nil {
		cfg.Stdout = t.Output()
	}
	if cfg.Stderr == nil {
		cfg.Stderr = t.Output()
	}
	tp.Supervisor, err = New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { killToken(t, tp.token) }) // runs last
	ctx, cancel := context.WithCancel(context.Background())
	tp.cancel = cancel
	go func() {
		defer close(tp.done)
		tp.err = tp.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-tp.done:
		case <-time.After(tp.cfg.Grace + 10*time.Second):
			t.Errorf("Run did not return within grace %v + 10s of cancel", tp.cfg.Grace)
			killToken(t, tp.token)
			<-tp.done
		}
	})
	return tp
}

// wait waits up to timeout for Run to return and returns its error.
func (tp *testPool) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-tp.done:
		return tp.err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %v", timeout)
		return nil
	}
}

// stop cancels Run's context and returns Run's error.
func (tp *testPool) stop(t *testing.T) error {
	t.Helper()
	tp.cancel()
	return tp.wait(t, tp.cfg.Grace+5*time.Second)
}

// assertRunning fails if Run has returned.
func (tp *testPool) assertRunning(t *testing.T) {
	t.Helper()
	select {
	case <-tp.done:
		t.Fatalf("Run returned %v, want it still running", tp.err)
	default:
	}
}

// waitChildren waits until the pool has n running children and returns them.
func (tp *testPool) waitChildren(t *testing.T, n int, timeout time.Duration) []Child {
	t.Helper()
	var cs []Child
	waitFor(t, timeout, fmt.Sprintf("%d children", n), func() bool {
		cs = tp.Children()
		return len(cs) == n
	})
	return cs
}

// waitFor polls cond until it is true and fails the test if it is still
// false after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorded returns the PIDs recorded in dir as kind-<pid> files.
func recorded(t *testing.T, dir, kind string) []int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		if s, ok := strings.CutPrefix(e.Name(), kind+"-"); ok {
			pid, err := strconv.Atoi(s)
			if err != nil {
				t.Fatalf("bad file %s", e.Name())
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// stat holds fields of /proc/<pid>/stat.
type stat struct {
	state byte
	ppid  int
	pgrp  int
}

func procStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	// "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	var f []string
	if i >= 0 {
		f = strings.Fields(string(b[i+1:]))
	}
	if len(f) < 3 {
		return stat{}, fmt.Errorf("/proc/%d/stat: malformed %q", pid, b)
	}
	ppid, _ := strconv.Atoi(f[1])
	pgrp, _ := strconv.Atoi(f[2])
	return stat{state: f[0][0], ppid: ppid, pgrp: pgrp}, nil
}

// alive reports whether pid is a live process; a zombie is dead.
func alive(pid int) bool {
	st, err := procStat(pid)
	return err == nil && st.state != 'Z' && st.state != 'X'
}

// liveProcs returns the live processes matching keep.
func liveProcs(keep func(pid int, st stat) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' {
			continue
		}
		if keep(pid, st) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// tokenProcs returns the live processes whose environment holds token.
func tokenProcs(token string) []int {
	want := envToken + "=" + token
	return liveProcs(func(pid int, _ stat) bool {
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err != nil {
			return false
		}
		for kv := range strings.SplitSeq(string(env), "\x00") {
			if kv == want {
				return true
			}
		}
		return false
	})
}

// killToken SIGKILLs every process left with token in its environment.
func killToken(t *testing.T, token string) {
	t.Helper()
	for _, pid := range tokenProcs(token) {
		t.Errorf("process %d left behind, killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
