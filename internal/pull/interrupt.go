package pull

import (
	"time"

	"github.com/nats-io/nats.go"
)

// Waking an idle long poll.
//
// An idle engine long-polls one source, the normal level of its sweep's
// first queue, and skips the others it knows to be empty (hints.go). A
// task published to one of those, while the worker waits, reaches the
// worker twice: at its hint subscription, and later, when the worker asks
// that source. So that the second comes at once, not at the end of the
// long poll, the hint subscription wakes the pull loop (Engine.poke), and
// the loop stops waiting for the long poll and sweeps again.
//
// JetStream has no way to take a pull request back; it does drop one whose
// reply subject nobody listens to any more. So the woken loop replaces its
// reply subscription: it drains the old one (a task the broker sent to the
// old request before the unsubscription reached it still comes in) and
// subscribes anew, under a new inbox. A task that comes in on a drained
// subscription is not counted toward the pull under way, whose slots it
// has no claim to: it is handed back for immediate redelivery (stale).
//
// Because a task published to a watched source ends the wait, the long
// poll lasts Config.IdlePoll (at most FetchWait) rather than the time a
// task of another level may wait: an idle worker of one queue sends, per
// IdlePoll, its long poll and a re-check of each other level that is used
// (hints.go; none, for a queue whose high and low levels never had a
// task), IdlePoll being the bound on
// how late it notices a task that is not published anew (redelivered after
// its ack wait, or a nak with a delay, or queued by the broker's
// schedule). While a source the sweep does not wait on is not watched
// (its last pull found tasks, its subscription has had its message, or it
// is another queue's normal level, which has no hint subscription), the
// long poll lasts at most blindPoll, as before wake-ups. And while a task
// was published to a source less than notifyWindow ago, the sweep waits
// on that source instead, until the end of the window: the stream may not
// have stored the task when the hint came, and the broker answers a
// waiting pull as soon as it has.

// blindPoll bounds the long poll of an idle sweep while a source it does
// not wait on is not watched.
const blindPoll = 250 * time.Millisecond

// longPoll returns the source an idle sweep (the sweep, whose idle source
// is sweep[idle]) waits on, how long, and whether a wake-up ends the wait.
func (p *puller) longPoll(sweep []*source, idle int, now time.Time) (src *source, wait time.Duration, wake bool) {
	watched := true
	for i, s := range sweep {
		if i == idle {
			continue
		}
		if s.fresh(now) {
			left := notifyWindow - time.Duration(now.UnixNano()-s.seen.Load())
			return s, max(left, time.Millisecond), false
		}
		if !s.watched() {
			watched = false
		}
	}
	if watched {
		return sweep[idle], p.idleWait, true
	}
	return sweep[idle], p.blindWait, false
}

// subscribe subscribes to the replies of the pull requests, under a new
// inbox.
func (p *puller) subscribe() error {
	inbox := p.e.cfg.Conn.NewInbox()
	sub, err := p.e.cfg.Conn.ChanSubscribe(inbox+".*", p.msgs)
	if err != nil {
		return err
	}
	p.sub, p.inbox = sub, inbox
	return nil
}

// renew drains the reply subscription and subscribes anew: the request
// under way is dropped by the broker.
func (p *puller) renew() error {
	_ = p.sub.Drain()
	p.sub = nil
	return p.subscribe()
}

// unsubscribe ends the reply subscription.
func (p *puller) unsubscribe() {
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
		p.sub = nil
	}
}

// stale hands back a task that came in on a drained subscription.
func (p *puller) stale(m *nats.Msg) {
	_ = p.e.acker.Msg(m).HandBack()
}
