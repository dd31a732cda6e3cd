// Package heapfloor keeps the Go garbage collector from running every few
// megabytes in a process whose live heap is small but which allocates
// fast: a forq worker running many short tasks.
//
// With the default GOGC=100 the collector runs each time the heap doubles,
// and never waits for less than 4 MB. A worker keeps about 1 MB live and
// allocates about 1 KB per task (most of it nats.go's: the message, its
// header map), so it collected every 3,000 tasks or so: 95 collections
// to drain 200,000 tasks. Each costs more than its marking: it wakes the
// idle processor for a mark worker, shrinks the stacks of parked
// goroutines (which grow again on their next task), and returns memory
// that the next cycle faults back in. Measured on 2 CPUs, draining no-op
// tasks: 10 µs of worker CPU per task at GOGC=100 against 7.5 µs with a
// heap goal of about 16 MB, and no gain past that (at 140 MB, page faults
// on fresh memory cost more than the collections saved).
//
// A floor, not a larger GOGC: the heap goal is the larger of the floor and
// what GOGC=100 gives, so a worker whose handlers keep a large heap
// collects exactly as it would without this package.
package heapfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Default is the floor forq's worker processes use unless told otherwise:
// measured on 2 CPUs, it saves most of the collections a worker of short
// tasks would run, for about 12 MB more resident memory under load.
const Default = 16 << 20

// Tuner moves GOGC after each garbage collection so that the next heap
// goal is at least its floor. Stop it with Stop.
type Tuner struct {
	floor uint64
	base  int // GOGC when the tuner started: restored by Stop

	mu      sync.Mutex
	stopped bool
	percent int // GOGC as last set
	sample  []metrics.Sample
}

// Start starts a Tuner with floor bytes. It returns nil, and changes
// nothing, when floor is 0 or the GOGC environment variable is set: a GOGC
// the user chose is kept as it is.
func Start(floor uint64, gogcEnv string) *Tuner {
	if floor == 0 || gogcEnv != "" {
		return nil
	}
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	t := &Tuner{floor: floor, base: base, percent: base, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.tune()
	t.arm()
	return t
}

// sentinel is garbage the tuner watches: its cleanup runs once after each
// collection. 16 bytes, so that it is not packed with others into a tiny
// block (which is freed only when all of them are).
type sentinel [16]byte

func (t *Tuner) arm() {
	runtime.AddCleanup(new(sentinel), func(t *Tuner) {
		t.mu.Lock()
		stopped := t.stopped
		t.mu.Unlock()
		if !stopped {
			t.tune()
			t.arm()
		}
	}, t)
}

// tune sets GOGC for a heap goal of at least the floor, given the heap the
// last collection found live.
func (t *Tuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	want := percentFor(t.sample[0].Value.Uint64(), t.floor, t.base)
	if want != t.percent {
		debug.SetGCPercent(want)
		t.percent = want
	}
}

// maxPercent bounds GOGC, as a guard: percentFor never asks for more than
// floor/heapMinimum100 * 100.
const maxPercent = 10_000

// heapMinimum100 is the runtime's smallest heap goal at GOGC=100; it
// scales with GOGC (runtime/mgcpacer.go: heapMinimum = 4 MB * GOGC/100).
const heapMinimum100 = 4 << 20

// percentFor returns the smallest GOGC, and at least base, whose heap goal
// reaches the floor. The runtime's goal is about the larger of
// live * (1 + GOGC/100) and heapMinimum100 * GOGC/100, so either term
// alone can get there: the second when little is live.
func percentFor(live, floor uint64, base int) int {
	if live == 0 {
		live = 1
	}
	if live*uint64(100+base)/100 >= floor || heapMinimum100*uint64(base)/100 >= floor {
		return base
	}
	byMinimum := (floor*100 + heapMinimum100 - 1) / heapMinimum100
	byLive := uint64(maxPercent)
	if live < floor {
		byLive = (floor - live) * 100 / live
	}
	return int(max(min(byMinimum, byLive, maxPercent), uint64(base)))
}

// Percent returns the GOGC the tuner last set.
func (t *Tuner) Percent() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.percent
}

// Stop stops the tuner and restores the GOGC it started with. Stop on a
// nil Tuner does nothing.
func (t *Tuner) Stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stopped {
		t.stopped = true
		debug.SetGCPercent(t.base)
	}
}
