package consumer

import (
	"context"
	"sync"
)

// dispatcher hands fetched tasks to runner goroutines. A runner processes
// a task, releases its slot and takes the next queued one, so that a busy
// worker does not start (and grow the stack of) a goroutine per task.
//
// Tasks wait in a queue rather than being handed to a parked runner one by
// one: a runner that finishes a task takes the next without parking, and a
// parked runner is woken, or a new one started (at most Concurrency), only
// when the queue holds more tasks than there are runners about to look at
// it. Fast tasks so run back to back on a few runners, with a wake-up per
// burst rather than per task (which is also what lets their acks leave
// together, see acker.go), while a slow handler never keeps a queued task
// from starting on another runner: every task holds a slot, so a task is
// queued only while fewer than Concurrency tasks run, and then a runner is
// free for it or is started.
type dispatcher struct {
	w *Worker
	// hard is Run's context for handlers; the dispatcher lives only
	// inside Run, which owns it.
	hard context.Context
	// base is hard without its cancellation: the parent of handlers'
	// contexts.
	base context.Context

	mu      sync.Mutex
	cond    *sync.Cond // parked runners wait on it
	queue   []job
	head    int  // queue[head:] waits
	running int  // runners alive
	parked  int  // runners waiting on cond, not yet signaled
	busy    int  // runners processing a task
	closed  bool // no more tasks; runners exit once the queue is empty
	runners sync.WaitGroup
}

func newDispatcher(w *Worker, hard context.Context) *dispatcher {
	d := &dispatcher{w: w, hard: hard, base: context.WithoutCancel(hard)}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// dispatch queues j for a runner, and wakes or starts one unless enough
// runners are already between tasks to take every queued one.
func (d *dispatcher) dispatch(j job) {
	d.mu.Lock()
	d.queue = append(d.queue, j)
	waiting := len(d.queue) - d.head
	if waiting > d.running-d.parked-d.busy {
		switch {
		case d.parked > 0:
			d.parked--
			d.cond.Signal()
		case d.running < cap(d.w.slots):
			d.running++
			d.runners.Go(d.run)
		}
	}
	d.mu.Unlock()
}

// close lets the runners exit once the queued tasks are done.
func (d *dispatcher) close() {
	d.mu.Lock()
	d.closed = true
	d.parked = 0
	d.cond.Broadcast()
	d.mu.Unlock()
}

func (d *dispatcher) run() {
	w := d.w
	r := &run{}
	w.mu.Lock()
	w.running[r] = struct{}{}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.running, r)
		w.mu.Unlock()
	}()
	d.mu.Lock()
	for {
		for d.head == len(d.queue) {
			if d.closed {
				d.running--
				d.mu.Unlock()
				return
			}
			// Reset the queue while it is empty, so it does not grow.
			d.queue, d.head = d.queue[:0], 0
			d.parked++
			d.cond.Wait() // the signaler counted us out of parked
		}
		j := d.queue[d.head]
		d.queue[d.head] = job{}
		d.head++
		d.busy++
		d.mu.Unlock()
		w.process(d.base, r, j.queue, j.prio, j.ackWait, j.m)
		w.release(1)
		d.mu.Lock()
		d.busy--
	}
}
