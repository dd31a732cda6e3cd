package pull

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Acknowledgements in batches.
//
// A busy worker ends many tasks a second, each on its own runner goroutine.
// If each runner published its task's ack itself, the connection's flusher
// would wake for nearly every one and write it alone: a write system call
// per task here, and a read per task at the broker, which is what limits
// throughput on a small machine (measured: 0.72 writes per task against
// 0.1 for a plain JetStream consumer acking a fetched batch in a loop).
//
// So final acknowledgements (ack, nak) go through the engine's Acker:
// runners queue them, and one goroutine publishes what has queued. When
// other tasks are still running, and so more acks are about to come, it
// first lingers up to Config.AckLinger for them; the ack of the last task
// in flight is published at once, by the runner itself. An ack is thus at
// most AckLinger late while the worker is busy, and not late at all when
// it goes idle. In-progress acks (heartbeats) are not final and are
// published directly.

// ackBatch is the most acks the acker waits for: it publishes at once when
// this many have queued.
const ackBatch = 256

type pendingAck struct {
	subject string
	body    []byte
}

// Acker publishes the final acknowledgements of the tasks it received
// (Msg) in batches; see above. Its goroutine is Run, until Close.
type Acker struct {
	nc     *nats.Conn
	linger time.Duration

	mu sync.Mutex
	// open counts the tasks received whose final ack is not queued yet:
	// while there are some, more acks are coming.
	open  int
	queue []pendingAck
	wake  chan struct{} // has a token when queue may be non-empty
	stop  chan struct{}
	done  chan struct{}
}

// NewAcker returns an Acker publishing on nc that lets acks gather for up
// to linger while other tasks are still running; linger <= 0 publishes
// each at once. Run publishes what queues, until Close.
func NewAcker(nc *nats.Conn, linger time.Duration) *Acker {
	return &Acker{nc: nc, linger: linger, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// Msg returns the delivered task m, whose final acknowledgement goes
// through a, and counts it among the tasks whose acks are coming.
func (a *Acker) Msg(m *nats.Msg) *Msg {
	a.mu.Lock()
	a.open++
	a.mu.Unlock()
	return &Msg{m: m, nc: a.nc, ack: a}
}

// send queues the final acknowledgement of a received task. Like nats.Conn.Publish it fails only on
// a closed connection; a queued ack is published unless the connection
// closes first, and then the broker redelivers the task after its ack wait.
func (a *Acker) send(subject string, body []byte) error {
	a.mu.Lock()
	a.open--
	if a.open == 0 && len(a.queue) == 0 {
		// Nothing to gather with: publish it here, without a hop to
		// the acker's goroutine, and before the caller frees its slot
		// and the worker pulls again.
		a.mu.Unlock()
		return a.nc.Publish(subject, body)
	}
	if a.nc.IsClosed() {
		a.mu.Unlock()
		return nats.ErrConnectionClosed
	}
	a.queue = append(a.queue, pendingAck{subject, body})
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run publishes queued acks until Close is called, then publishes the
// rest and returns.
func (a *Acker) Run() {
	defer close(a.done)
	var batch []pendingAck
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-a.wake:
		case <-a.stop:
			a.flush(&batch)
			return
		}
		if a.linger > 0 && a.more() {
			// Other tasks are running: let their acks join this batch,
			// until the linger ends, the batch is full, or the worker
			// has nothing else running.
			timer.Reset(a.linger)
		linger:
			for {
				select {
				case <-timer.C:
					break linger
				case <-a.stop:
					break linger
				case <-a.wake:
					if !a.more() {
						break linger
					}
				}
			}
			timer.Stop()
		}
		a.flush(&batch)
	}
}

// more reports whether acks are about to come that could join those
// queued: tasks are still open, and the batch is not full.
func (a *Acker) more() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.open > 0 && len(a.queue) < ackBatch
}

// flush publishes every queued ack.
func (a *Acker) flush(batch *[]pendingAck) {
	a.mu.Lock()
	*batch, a.queue = a.queue, (*batch)[:0]
	a.mu.Unlock()
	for _, p := range *batch {
		_ = a.nc.Publish(p.subject, p.body)
	}
	clear(*batch)
}

// Close stops Run, once it has published the acks still queued, and
// waits for it to return. Call it once, after Run started.
func (a *Acker) Close() {
	close(a.stop)
	<-a.done
}
