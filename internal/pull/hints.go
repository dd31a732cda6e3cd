package pull

import (
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
)

// Hints: skipping sources known to be empty.
//
// Each sweep asks the sources in priority order, and a no-wait pull that
// finds nothing still costs a round trip to the broker. Measured on a
// busy broker, the empty high level's answer took 1.5 ms of each 4.3 ms
// cycle of a worker draining its normal level: a third of its time.
//
// So a high or low level whose last pull found nothing is marked empty,
// and while it is, the worker subscribes (plain NATS, no JetStream) to the
// subject its tasks are published on. A sweep skips an empty source unless
// a task was published to it since it was last pulled, or in the last
// notifyWindow (a task is delivered to subscribers a moment before the
// stream has stored it), or the source is used and was last pulled
// idleWait ago (a redelivered task, or one the broker's schedule fires, is
// not published anew). The subscription ends after one message, or when a pull finds
// tasks: a source with tasks costs no extra traffic, and an empty one at
// most a message each time the worker finds it empty. Normal levels, where
// most tasks go and which an idle worker long-polls, are always pulled: a
// subscription there would come and go with every task of a worker that
// keeps up with its producers.
//
// A task of a skipped level so waits, as before, at most the batch in
// flight when it was published (on an idle worker, the publication ends
// the long poll: interrupt.go); a redelivered one at most idleWait. And
// only a used level (source.used: one that had tasks, pending or held,
// when the engine declared it, or since; or that a schedule targets, see
// schedules.go) can hold a task that was not published while the engine
// watched it: a level never used is not re-checked at all. Its hint
// subscription, made before its consumer was looked up, marks it used
// when its first task comes; a reconnection, which may have hidden a
// publication, marks every level used.

// notifyWindow is how long after a task is published to an empty source
// the source is pulled on every sweep, whatever the pulls find: ample for
// the stream to store the task even on a loaded broker (a source gets one
// such notice each time the worker finds it empty, so the cost is a few
// no-wait pulls).
const notifyWindow = 200 * time.Millisecond

// skip reports whether the sweep at now can pass src by.
func (src *source) skip(now time.Time, recheck time.Duration) bool {
	if src.prio == forq.PriorityNormal || !src.empty || (src.used.Load() && now.Sub(src.checked) >= recheck) {
		return false
	}
	seen := src.seen.Load()
	return seen <= src.checked.UnixNano() && now.UnixNano()-seen > int64(notifyWindow)
}

// pulled records what a pull of src at now found: n tasks.
func (e *Engine) pulled(src *source, n int, now time.Time) {
	if src.prio == forq.PriorityNormal {
		return
	}
	if n > 0 {
		src.used.Store(true)
		src.empty = false
		if src.sub != nil {
			_ = src.sub.Unsubscribe()
			src.sub = nil
		}
		return
	}
	src.empty, src.checked = true, now
	if src.sub == nil || !src.sub.IsValid() {
		sub, err := hint(e.cfg.Conn, src, e.poke)
		if err != nil {
			// Without the subscription the source is not skipped.
			src.empty = false
			return
		}
		src.sub = sub
	}
}

// hint subscribes to the subject src's tasks are published on: a task
// published marks src used, records when in src.seen and wakes the
// engine's long poll (poke; see interrupt.go).
func hint(nc *nats.Conn, src *source, poke chan struct{}) (*nats.Subscription, error) {
	seen, used := src.seen, src.used
	sub, err := nc.Subscribe(src.tasks, func(*nats.Msg) {
		seen.Store(time.Now().UnixNano())
		used.Store(true)
		// One wake-up pending is enough.
		select {
		case poke <- struct{}{}:
		default:
		}
	})
	if err == nil {
		// One task is news enough: the broker sends no more, so a
		// level that fills while the worker cannot pull it (paused, or
		// drained by other workers) costs at most a message per sweep.
		err = sub.AutoUnsubscribe(1)
	}
	if err != nil && sub != nil {
		_ = sub.Unsubscribe()
	}
	return sub, err
}

// watched reports whether a task published to src would wake the
// engine: src is known to be empty and its subscription is on.
func (src *source) watched() bool {
	return src.empty && src.sub != nil && src.sub.IsValid()
}

// fresh reports whether a task was published to src within notifyWindow
// of now: the stream may not have stored it yet.
func (src *source) fresh(now time.Time) bool {
	seen := src.seen.Load()
	return seen != 0 && now.UnixNano()-seen < int64(notifyWindow)
}

// useAll marks every source used if the connection was lost since it was
// last looked at: a task published meanwhile was not seen by the hint
// subscriptions.
func (e *Engine) useAll() {
	r := e.cfg.Conn.Stats().Reconnects
	if r == e.reconnects {
		return
	}
	e.reconnects = r
	for _, q := range e.byQueue {
		for i := range q {
			q[i].used.Store(true)
		}
	}
}

// unhint ends the sources' subscriptions.
func unhint(byQueue [][]source) {
	for _, q := range byQueue {
		for i := range q {
			if q[i].sub != nil {
				_ = q[i].sub.Unsubscribe()
				q[i].sub = nil
			}
		}
	}
}
