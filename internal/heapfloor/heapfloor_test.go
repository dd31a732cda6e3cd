package heapfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		base, want  int
	}{
		{1 * mib, 16 * mib, 100, 400}, // the minimum goal, 4 MiB at 100, reaches 16 MiB at 400
		{6 * mib, 16 * mib, 100, 166}, // 6 MiB live * 2.66
		{8 * mib, 16 * mib, 100, 100}, // GOGC=100 reaches the floor
		{512 * mib, 16 * mib, 100, 100},
		{0, 16 * mib, 100, 400},
		{0, 1 << 40, 100, maxPercent}, // bounded
		{1 * mib, 16 * mib, 400, 400}, // a base that reaches it already
		{1 * mib, 16 * mib, 500, 500},
	} {
		if got := percentFor(c.live, c.floor, c.base); got != c.want {
			t.Errorf("percentFor(live %d, floor %d, base %d) = %d, want %d", c.live, c.floor, c.base, got, c.want)
		}
	}
}

// gcPercent reads GOGC without changing it.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// collections counts the garbage collections while n MiB of short-lived
// garbage is allocated in 1 KiB pieces, as a worker's tasks would.
var sink []byte

func collections(n int) uint32 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n << 10 {
		sink = make([]byte, 1024)
	}
	runtime.ReadMemStats(&after)
	return after.NumGC - before.NumGC
}

// waitPercent waits for the tuner's cleanup, which runs on the runtime's
// cleanup goroutine after a collection.
func waitPercent(t *testing.T, tu *Tuner, ok func(int) bool) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		if p := tu.Percent(); ok(p) && gcPercent() == p {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("tuner at GOGC=%d, runtime at %d", tu.Percent(), gcPercent())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A process with a small live heap collects far less often under a floor,
// and collects as before once its live heap is past the floor or the tuner
// stops.
func TestFloorCutsCollections(t *testing.T) {
	runtime.GC()
	without := collections(256)

	tu := Start(64<<20, "")
	if tu == nil {
		t.Fatal("Start returned nil without GOGC set")
	}
	defer tu.Stop()
	waitPercent(t, tu, func(p int) bool { return p > 100 })
	with := collections(256)
	t.Logf("collections while allocating 256 MiB: %d at GOGC=100, %d with a 64 MiB floor", without, with)
	if with*4 > without {
		t.Fatalf("%d collections with a 64 MiB floor, %d without: want at most a quarter", with, without)
	}

	// A live heap as large as the floor: GOGC=100 again.
	big := make([][]byte, 96)
	for i := range big {
		big[i] = make([]byte, 1<<20)
	}
	waitPercent(t, tu, func(p int) bool { return p == 100 })
	runtime.KeepAlive(big) // and no longer: the collector may take it

	tu.Stop()
	if p := gcPercent(); p != 100 {
		t.Fatalf("GOGC=%d after Stop, want the 100 it started with", p)
	}
	runtime.GC()
	runtime.GC()
	if p := gcPercent(); p != 100 {
		t.Fatalf("GOGC=%d after Stop and two collections: the tuner still runs", p)
	}
}

// A GOGC the user set, or a floor of 0, turns the tuner off.
func TestUserGOGCWins(t *testing.T) {
	if tu := Start(64<<20, "200"); tu != nil {
		tu.Stop()
		t.Fatal("Start ran with GOGC set")
	}
	if tu := Start(0, ""); tu != nil {
		tu.Stop()
		t.Fatal("Start ran with a floor of 0")
	}
	var tu *Tuner
	tu.Stop() // a nil Tuner stops quietly
}
