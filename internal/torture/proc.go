package torture

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Children returns the live child processes of pid (zombies left out),
// read from /proc: each thread's children file, or, where the kernel
// has none, every process's parent.
func Children(pid int) []int {
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "children"))
	var out []int
	if len(tasks) > 0 {
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, s := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(s); err == nil && Alive(c) {
					out = append(out, c)
				}
			}
		}
		return out
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ppid, ok := procStat(c); ok && ppid == pid && st != "Z" {
			out = append(out, c)
		}
	}
	return out
}

// Alive reports whether process pid exists and is not a zombie.
func Alive(pid int) bool {
	st, _, ok := procStat(pid)
	return ok && st != "Z" && st != "X"
}

// procStat reads a process's state and parent from /proc/<pid>/stat.
func procStat(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return "", 0, false
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0], ppid, true
}

// waitGone waits until pid is gone or a zombie, or d has passed; it
// reports whether it is.
func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for Alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// watcher records in the history when each worker process is seen gone:
// for a run with no end, the latest its process can have died.
type watcher struct {
	log  *Log
	pool func() int // the pool's PID now
	mu   sync.Mutex
	seen map[int]bool
}

// run polls every tick until ctx is done.
func (w *watcher) run(ctx context.Context, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		w.poll()
		select {
		case <-ctx.Done():
			w.poll()
			return
		case <-t.C:
		}
	}
}

func (w *watcher) poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[int]bool{}
	}
	if p := w.pool(); p > 0 {
		for _, c := range Children(p) {
			w.seen[c] = true
		}
	}
	for pid := range w.seen {
		if !Alive(pid) {
			_ = w.log.Append(Event{Ev: EvGone, PID: pid})
			delete(w.seen, pid)
		}
	}
}

// track watches pid too, e.g. a worker of a pool that was killed.
func (w *watcher) track(pid int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[int]bool{}
	}
	w.seen[pid] = true
}
