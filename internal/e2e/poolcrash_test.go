package e2e

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
)

// readyLine is the pool's log line for a child that became ready.
var readyLine = regexp.MustCompile(`msg="child ready" child=(\d+) pid=(\d+) how=(\S+)`)

// readyPIDs returns the PIDs of the children the pool logged as ready, and
// how each became ready ("signalled", or by its ready timeout).
func readyPIDs(p *proc) map[int]string {
	out := map[int]string{}
	for _, m := range readyLine.FindAllStringSubmatch(p.stderr(), -1) {
		pid, _ := strconv.Atoi(m[2])
		out[pid] = m[3]
	}
	return out
}

// readyIndex returns the pool index of each child PID the pool logged as
// ready.
func readyIndex(p *proc) map[int]string {
	out := map[int]string{}
	for _, m := range readyLine.FindAllStringSubmatch(p.stderr(), -1) {
		pid, _ := strconv.Atoi(m[2])
		out[pid] = m[1]
	}
	return out
}

// readyChildren returns the pool's live children that it logged as ready.
func readyChildren(p *proc) []int {
	ready := readyPIDs(p)
	var out []int
	for _, pid := range childPIDs(p.cmd.Process.Pid) {
		if _, ok := ready[pid]; ok {
			out = append(out, pid)
		}
	}
	return out
}

// zombies returns the children of pid that have exited and not been
// reaped (<defunct> in ps).
func zombies(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(n); ok && p.ppid == pid && p.state == "Z" {
			out = append(out, n)
		}
	}
	return out
}

// openFiles returns what /proc/<pid>/fd lists: each descriptor's target.
func openFiles(t *testing.T, pid int) []string {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(dir + "/" + e.Name())
		out = append(out, e.Name()+" -> "+target)
	}
	return out
}

// threads returns the number of threads of process pid.
func threads(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatalf("no Threads line in /proc/%d/status", pid)
	return 0
}

// Tasks that crash the worker running them (an exec task that SIGABRTs its
// worker: the Go runtime exits 2) never stop the pool, even with a storm
// limit of 2 in 60s: the workers were ready, so their crashes are not
// failures to start. Before, the third crash of one worker within the
// window stopped the pool with its healthy workers. The normal tasks around
// them all succeed.
func TestPoolSurvivesCrashingTasks(t *testing.T) {
	const crashing, normal = 12, 200
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "-n", "2", "--allow-exec", "--ack-wait", "2s",
		"--max-restarts", "2", "--restart-window", "60s")
	eventually(t, 30*time.Second, func() bool { return len(readyChildren(p)) == 2 }, "pool has %d ready children, want 2", len(readyChildren(p)))
	startAt := time.Now()
	for range crashing {
		enqueueExec(t, env, []string{"--max-attempts", "1"}, "sh", "-c", "kill -ABRT $PPID; sleep 5")
	}
	ids := enqueueLines(t, env, "echo", normal, strconv.Itoa, "--record")
	js := b.js(t)
	crashes := func() int { return strings.Count(p.stderr(), `msg="child crashed, restarting"`) }
	eventually(t, 120*time.Second, func() bool {
		if p.exited() {
			t.Fatalf("the pool exited: %v", p.err)
		}
		return crashes() >= crashing && countState(results(t, js, ids), forq.StateSucceeded) == normal
	}, "%d crashes of %d, %d of %d normal tasks succeeded", crashes(), crashing, countState(results(t, js, ids), forq.StateSucceeded), normal)
	perChild := map[string]int{}
	for _, m := range regexp.MustCompile(`msg="child crashed, restarting" child=(\d+)`).FindAllStringSubmatch(p.stderr(), -1) {
		perChild[m[1]]++
	}
	figuref(t, "%d worker crashes (per child %v) and %d normal tasks done in %v; the pool runs on",
		crashes(), perChild, normal, time.Since(startAt).Round(time.Millisecond))
	if p.exited() {
		t.Fatalf("the pool exited: %v", p.err)
	}
	for _, bad := range []string{"restart storm", "failed to start"} {
		if strings.Contains(p.stderr(), bad) {
			t.Errorf("pool stderr says %q; want crashes of ready workers not counted", bad)
		}
	}
	if n := crashes(); n < crashing {
		t.Errorf("worker crashes: got %d, want at least %d (one per crashing task)", n, crashing)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d after SIGTERM, want 0", code)
	}
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// killLog is what killReady did: when it killed each child, and the zombies
// it saw meanwhile.
type killLog struct {
	at                         map[int]time.Time // by PID
	mostZombies, zombieSamples int
}

// killReady SIGKILLs n ready children of pool p, one after another as
// fast as the pool brings them back, each child once. It fails the test if
// the pool exits or has no ready child to kill for 5 minutes.
func killReady(t *testing.T, p *proc, n int) killLog {
	t.Helper()
	pool := p.cmd.Process.Pid
	k := killLog{at: map[int]time.Time{}}
	startAt := time.Now()
	for i := 0; i < n; {
		if p.exited() {
			t.Fatalf("the pool exited after %d kills: %v", i, p.err)
		}
		if z := len(zombies(pool)); z > 0 {
			k.zombieSamples++
			k.mostZombies = max(k.mostZombies, z)
		}
		var victim int
		for _, pid := range readyChildren(p) {
			if _, done := k.at[pid]; !done {
				victim = pid
				break
			}
		}
		if victim == 0 {
			if time.Since(startAt) > 5*time.Minute {
				t.Fatalf("only %d kills in 5 minutes: no ready child to kill", i)
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", victim, err)
		}
		k.at[victim] = time.Now()
		i++
	}
	return k
}

// mostKillsWithin is the most kills of one child (one pool index, from
// index by PID) within a window.
func mostKillsWithin(killedAt map[int]time.Time, index map[int]string, window time.Duration) int {
	byIndex := map[string][]time.Time{}
	for pid, at := range killedAt {
		byIndex[index[pid]] = append(byIndex[index[pid]], at)
	}
	most := 0
	for _, ts := range byIndex {
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
		for i := range ts {
			j := i
			for j < len(ts) && ts[j].Sub(ts[i]) < window {
				j++
			}
			most = max(most, j-i)
		}
	}
	return most
}

// restartDelays are the delays of the pool's "child crashed, restarting"
// records in its log.
func restartDelays(t *testing.T, log string) []time.Duration {
	t.Helper()
	var delays []time.Duration
	for _, m := range regexp.MustCompile(`msg="child crashed, restarting" .*delay=(\S+)`).FindAllStringSubmatch(log, -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("delay %q: %v", m[1], err)
		}
		delays = append(delays, d)
	}
	return delays
}

// Done when 5: 300 rapid kills of ready workers (SIGKILL, one after
// another as fast as the pool brings them back): the pool keeps running
// with its default storm limit, leaves no zombie (<defunct>) child, and its
// open files are the same before and after.
func TestPoolRapidKills(t *testing.T) {
	const workers, kills = 4, 300
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "-n", strconv.Itoa(workers))
	pool := p.cmd.Process.Pid
	settled := func(what string) {
		t.Helper()
		eventually(t, 60*time.Second, func() bool {
			return len(readyChildren(p)) == workers && len(childPIDs(pool)) == workers && len(zombies(pool)) == 0
		}, "%s: %d ready children of %d, zombies %v", what, len(readyChildren(p)), workers, zombies(pool))
		time.Sleep(300 * time.Millisecond) // the last start's output goroutines and threads settle
	}
	settled("before the kills")
	filesBefore, threadsBefore := openFiles(t, pool), threads(t, pool)

	startAt := time.Now()
	k := killReady(t, p, kills)
	took := time.Since(startAt)
	// The most kills of one child (one index) within 10s, the default
	// restart window: 6 used to stop the pool.
	mostIn10s := mostKillsWithin(k.at, readyIndex(p), 10*time.Second)
	settled("after the kills")
	filesAfter, threadsAfter := openFiles(t, pool), threads(t, pool)
	how := map[string]int{}
	for _, h := range readyPIDs(p) {
		how[h]++
	}
	figuref(t, "%d kills in %v (%.1f/s); open files %d before, %d after; threads %d before, %d after; "+
		"zombies seen in %d samples (at most %d at once, each until the pool reaped it), %d at the end; children ready by %v; "+
		"at most %d kills of one child within 10s",
		kills, took.Round(time.Millisecond), float64(kills)/took.Seconds(), len(filesBefore), len(filesAfter),
		threadsBefore, threadsAfter, k.zombieSamples, k.mostZombies, len(zombies(pool)), how, mostIn10s)
	// Every child killed was ready, so each restart came after the
	// back-off's minimum (100ms, plus up to 50% jitter), never more: under
	// periodic kills most restarts used to wait the 10s cap.
	delays := restartDelays(t, p.stderr())
	if len(delays) != kills {
		t.Errorf("restart records: got %d, want %d", len(delays), kills)
	}
	if len(delays) > 0 {
		figuref(t, "restart delays: shortest %v, longest %v", slices.Min(delays), slices.Max(delays))
		if d := slices.Max(delays); d > 150*time.Millisecond {
			t.Errorf("longest restart delay: got %v, want at most 150ms (back-off reset by readiness)", d)
		}
	}
	if mostIn10s < 6 {
		t.Errorf("at most %d kills of one child within 10s, want 6 or more (the case that used to stop the pool)", mostIn10s)
	}
	if len(filesAfter) != len(filesBefore) {
		t.Errorf("the pool's open files: got %d after the kills, want %d as before\nbefore: %v\nafter:  %v",
			len(filesAfter), len(filesBefore), filesBefore, filesAfter)
	}
	if z := zombies(pool); len(z) > 0 {
		t.Errorf("zombie children of the pool: got %v, want none", z)
	}
	// Each child's thread is discarded once the child is reaped (see
	// pool.runProc); a leak would show as one thread per kill.
	if threadsAfter > threadsBefore+kills/10 {
		t.Errorf("the pool's threads: got %d after %d kills, want about the %d before", threadsAfter, kills, threadsBefore)
	}
	if n := how["signalled"]; n < kills {
		t.Errorf("children that signalled readiness: got %d, want every forq work child (%d started)", n, kills+workers)
	}
	if strings.Contains(p.stderr(), "restart storm") || strings.Contains(p.stderr(), "could not tell the pool") {
		t.Errorf("pool stderr: want no restart storm and no readiness failure:\n%s", tail(p.stderr(), 3000))
	}
	// The pool still works.
	if code, out, errs := run(t, nil, env, "enqueue", "echo", "--payload", "still-here", "--wait", "--wait-timeout", "30s"); code != 0 || !strings.Contains(out, "still-here") {
		t.Errorf("enqueue --wait after the kills: exit %d, %q, %s", code, out, errs)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d after SIGTERM, want 0", code)
	}
}

// --ready-timeout must be positive: 0 would deem every worker ready at
// once and turn the storm limit off.
func TestPoolReadyTimeoutFlag(t *testing.T) {
	for _, v := range []string{"0s", "-1s"} {
		code, _, errs := run(t, nil, nil, "pool", "-n", "1", "--ready-timeout="+v, "--", "true")
		if code != 2 || !strings.Contains(errs, "--ready-timeout "+v+": must be positive") {
			t.Errorf("--ready-timeout=%s: got exit %d, stderr %q; want exit 2 saying it must be positive", v, code, errs)
		}
	}
}
