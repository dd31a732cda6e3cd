package pull

import (
	"context"
	"sync"
)

// dispatcher hands fetched tasks to runner goroutines. A runner processes
// a task, releases its slot and takes the next queued one, so that a busy
// worker does not start (and grow the stack of) a goroutine per task.
//
// Tasks wait in a queue rather than being handed to a parked runner one by
// one: a runner that finishes a task takes the next without parking. When
// the queue holds more tasks than there are runners about to look at it,
// one more runner is called (a parked one woken, or a new one started, at
// most Concurrency), and only one at a time: the runner called, once it
// has taken a task, calls the next if tasks are still left over, and only
// then runs its own. So a slow handler never keeps a queued task from
// starting (while tasks are left over a runner is on its way to them, and
// as every task holds a slot, a runner can always be had), but a burst of
// fast tasks is not met with a runner woken for each: the pull loop hands
// over a burst faster than woken runners get to run, and calling one per
// queued task woke 0.95 runners per task while a worker drained a full
// queue, each to run one task and park again. Called one at a time, the
// first runs the burst while the next is on its way. Measured draining
// no-op tasks with GOMAXPROCS=1, as a pool's worker runs: 6.0-6.5 µs of
// CPU per task against 7.0-7.3. Fast tasks so run back to back on a few
// runners, which is also what lets their acks leave together (see
// acker.go).
type dispatcher struct {
	e *Engine
	// newRunner makes the Runner of each new runner goroutine; base is
	// the context of its deliveries (Run's, without its cancellation).
	// Both are set by Run before the first dispatch.
	newRunner func() Runner
	base      context.Context

	mu      sync.Mutex
	cond    *sync.Cond // parked runners wait on it
	queue   []Delivery
	head    int  // queue[head:] waits
	running int  // runners alive
	parked  int  // runners waiting on cond, not yet signaled
	busy    int  // runners processing a task
	calling bool // a runner is on its way: started or signaled, not yet at the queue
	closed  bool // no more tasks; runners exit once the queue is empty
	runners sync.WaitGroup
}

func newDispatcher(e *Engine) *dispatcher {
	d := &dispatcher{e: e}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// dispatch queues j for a runner, and calls one unless enough runners are
// between tasks to take every queued one, or one is already on its way.
func (d *dispatcher) dispatch(j Delivery) {
	d.mu.Lock()
	d.queue = append(d.queue, j)
	if !d.calling {
		d.call()
	}
	d.mu.Unlock()
}

// call wakes a parked runner, or starts one, if more tasks wait than there
// are runners between tasks (which will each take one). d.mu is held.
func (d *dispatcher) call() {
	if len(d.queue)-d.head <= d.running-d.parked-d.busy {
		return
	}
	switch {
	case d.parked > 0:
		d.parked--
		d.calling = true
		d.cond.Signal()
	case d.running < cap(d.e.slots):
		d.running++
		d.calling = true
		// Owned by d.runners, which Run waits for; a runner whose
		// delivery is abandoned is counted out by abandoned instead.
		d.runners.Add(1)
		go func() {
			if !d.run() {
				d.runners.Done()
			}
		}()
	}
}

// close lets the runners exit once the queued tasks are done.
func (d *dispatcher) close() {
	d.mu.Lock()
	d.closed = true
	d.parked = 0
	d.cond.Broadcast()
	d.mu.Unlock()
}

// abandoned takes a runner whose delivery was abandoned out of the count:
// its goroutine is left behind (see Engine.Abandon), and another may take
// its place.
func (d *dispatcher) abandoned() {
	d.mu.Lock()
	d.busy--
	d.running--
	if !d.calling {
		d.call()
	}
	d.mu.Unlock()
	d.runners.Done()
}

// run takes and processes tasks until the dispatcher is closed. It
// reports whether a delivery was abandoned: then the runner was counted
// out by abandoned, and returns without touching the dispatcher.
func (d *dispatcher) run() (abandoned bool) {
	r := d.newRunner()
	defer r.Exit()
	d.mu.Lock()
	d.calling = false // this runner was called: it has arrived
	for {
		for d.head == len(d.queue) {
			if d.closed {
				d.running--
				d.mu.Unlock()
				return false
			}
			// Reset the queue while it is empty, so it does not grow.
			d.queue, d.head = d.queue[:0], 0
			d.parked++
			d.cond.Wait() // the signaler counted us out of parked
			d.calling = false
		}
		j := d.queue[d.head]
		d.queue[d.head] = Delivery{}
		d.head++
		d.busy++
		if !d.calling {
			// Tasks left over: the next runner before this task.
			d.call()
		}
		d.mu.Unlock()
		if r.Deliver(d.base, j) {
			return true
		}
		d.e.release(1)
		d.mu.Lock()
		d.busy--
	}
}
