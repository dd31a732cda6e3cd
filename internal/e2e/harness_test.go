// Package e2e tests forq as users run it: built binaries in separate OS
// processes, real signals, a real broker process.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bin holds the binaries built for the tests: forq, producer, worker,
// poisonworker.
var bin = map[string]string{}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "forq-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for name, pkg := range map[string]string{
		"forq":     "github.com/forqhq/forq/cmd/forq",
		"producer": "github.com/forqhq/forq/examples/producer",
		"worker":   "github.com/forqhq/forq/examples/worker",
		// A worker binary of the tests' own, with poison task types.
		"poisonworker": "github.com/forqhq/forq/internal/e2e/poisonworker",
	} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
			_ = os.RemoveAll(dir) // best effort: exiting anyway
			os.Exit(1)
		}
		bin[name] = out
	}
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintf(os.Stderr, "remove the built binaries: %v\n", err)
	}
	if left := children(os.Getpid()); len(left) > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "tests left processes behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

// procEntry is a process as /proc/<pid>/stat shows it.
type procEntry struct {
	pid, ppid int
	state     string
	start     string // start time since boot, in clock ticks: tells a reused PID
}

func readProc(pid int) (procEntry, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procEntry{}, false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 20 {
		return procEntry{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	return procEntry{pid: pid, ppid: ppid, state: f[0], start: f[19]}, true
}

// descendants lists pid's children, their children and so on.
func descendants(pid int) []procEntry {
	byParent := map[int][]procEntry{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(n); ok {
			byParent[p.ppid] = append(byParent[p.ppid], p)
		}
	}
	var out []procEntry
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		for _, c := range byParent[queue[0]] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// stillRunning returns the PIDs of procs that still run: not exited, not
// a zombie, and not a new process with a reused PID.
func stillRunning(procs []procEntry) []int {
	var out []int
	for _, p := range procs {
		if now, ok := readProc(p.pid); ok && now.start == p.start && now.state != "Z" {
			out = append(out, p.pid)
		}
	}
	return out
}

// children lists the live processes whose parent is pid, read from /proc.
func children(pid int) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		rest := s[strings.LastIndexByte(s, ')')+2:]
		f := strings.Fields(rest)
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, e.Name()+" "+s[:strings.LastIndexByte(s, ')')+1])
		}
	}
	return out
}

// proc is a process started by a test, with its output captured.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer // stdout
	errb bytes.Buffer // stderr
	done chan struct{}
	err  error
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// start runs binary name with args and env; the test's cleanup kills it.
func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin[name], args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = lockedWriter{&p.mu, &p.out}
	p.cmd.Stderr = lockedWriter{&p.mu, &p.errb}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		// The process's own children (a pool's workers) are orphaned by
		// the kill and must stop by themselves, on their parent-death
		// signal: no test may leave one running.
		desc := descendants(p.cmd.Process.Pid)
		p.signal(syscall.SIGKILL)
		<-p.done
		deadline := time.Now().Add(15 * time.Second)
		for left := stillRunning(desc); len(left) > 0; left = stillRunning(desc) {
			if time.Now().After(deadline) {
				t.Errorf("%s %v: its children %v still run 15s after it was killed", name, args, left)
				for _, pid := range left {
					_ = syscall.Kill(pid, syscall.SIGKILL) // leave nothing behind
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if t.Failed() {
			t.Logf("%s %v stderr (last 3000 bytes):\n%s", name, args, tail(p.stderr(), 3000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

func (p *proc) stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *proc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errb.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("%s still running after %s; stderr:\n%s", p.name, d, tail(p.stderr(), 3000))
	}
	return p.cmd.ProcessState.ExitCode()
}

// lines returns the stdout lines that start with prefix, without it.
func (p *proc) lines(prefix string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(p.stdout()))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			out = append(out, strings.Fields(rest)[0])
		}
	}
	return out
}

// run runs the forq binary to its end and returns its exit code, stdout and
// stderr.
func run(t *testing.T, stdin io.Reader, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin["forq"], args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("forq %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

func eventually(t *testing.T, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePorts returns the first of n consecutive ports that are free on
// 127.0.0.1, below Linux's ephemeral range (32768 and up) so that no
// outgoing connection takes one of them before the test's process listens.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for range 200 {
		base := 20000 + rand.N(12000-n)
		ok := true
		for i := range n {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports in 20000-32000", n)
	return 0
}

// broker is a "forq broker" process.
type broker struct {
	*proc
	url  string
	dir  string
	port int
}

// startBroker runs "forq broker" on port (0: a free one) with its data in
// dir ("": a new temporary directory) and waits until it is ready.
func startBroker(t *testing.T, dir string, port int) *broker {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if port == 0 {
		port = freePort(t)
	}
	p := start(t, "forq", nil, "broker", "--data-dir", dir, "--port", strconv.Itoa(port))
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	eventually(t, 20*time.Second, func() bool { return strings.Contains(p.stderr(), "NATS with JetStream at "+url) },
		"broker did not report ready; stdout %q stderr %q", p.stdout(), p.stderr())
	return &broker{proc: p, url: url, dir: dir, port: port}
}

// js connects to the broker for inspection, as an operator would.
func (b *broker) js(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(b.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// streamMsgs returns how many messages stream holds on subject.
func streamMsgs(t *testing.T, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	i, err := s.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	if subject == "" {
		return i.State.Msgs
	}
	var n uint64
	for _, c := range i.State.Subjects {
		n += c
	}
	return n
}

// figuref logs a test's figures, and appends them, with the test's name,
// to the file FORQ_E2E_FIGURES names, if it is set: go test shows the log
// of a passing test only with -v, and CI (.ci/run) prints that file, so
// the figures of the fault suite are in every CI log.
func figuref(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf(format, args...)
	path := os.Getenv("FORQ_E2E_FIGURES")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Logf("figures file: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s: %s\n", t.Name(), fmt.Sprintf(format, args...))
}
