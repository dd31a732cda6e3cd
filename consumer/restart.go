package consumer

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
)

// Broker restarts, and one run per task.
//
// What the broker keeps on disk for a task delivered and not yet acked is
// its delivery sequence and a time: the message's publish time, written at
// each delivery, which an in-progress ack (a heartbeat) or a nak with a
// delay replaces with its own. A nak without a delay changes nothing on
// disk. A broker that starts again reads these back and, 0.5 to 1.5 s
// later, redelivers every task whose time is more than the ack wait ago.
// Left alone, that is every running task published more than an ack wait
// ago whose first heartbeat (a third of the ack wait into its run) had not
// come yet, and every task running when the broker was down longer than
// two thirds of the ack wait: each would run a second time while its first
// run goes on. And a task handed back by a plain nak just before the
// restart would wait out a whole ack wait after it. So:
//
//   - On every reconnect a worker sends a heartbeat for each task it runs
//     at once, before the broker's check of what it read back.
//   - A task is handed back (shutdown, abort) with a nak with a 1 ms delay
//     (pull.Msg.HandBack), which the broker writes down: after a restart
//     it is due at once.
//   - A worker that receives a redelivered task (delivery count above 1)
//     first asks on wire.RunningSubject(queue) whether a live worker still
//     runs it (a core NATS request carrying its stream sequence). Only the
//     worker that runs it answers, after sending a heartbeat for it; the
//     asker then naks the delivery with a delay of the ack wait, so the task
//     comes back only if that worker's heartbeats stop. Nobody answering
//     within fenceWait (longer just after a reconnect, when the holder may
//     not be back yet: see reconnectFenceWait) means nobody runs it. First deliveries never ask,
//     and neither do tasks with a lock key, which their lock keeps to one
//     run at a time: the common path pays nothing.
//
// The broker takes an ack, a nak or a heartbeat on the reply subject of an
// earlier delivery of a task as one for the task (it looks the task up by
// its stream sequence), so the first run's own ack still ends the task.

// fenceWait is how long a worker waits for an answer to "does anyone still
// run this task?" before it runs a redelivered task. Within
// fenceReconnectWindow of this worker's reconnecting, it waits longer
// (reconnectFenceWait): a broker that restarts redelivers the tasks that
// were running 0.5 to 1.5 s after it starts, and a worker that runs one
// may still be reconnecting then, for as long as one dial that hung (to
// the address of a broker container that is not back yet) plus a
// reconnect wait.
const (
	fenceWait            = 250 * time.Millisecond
	minReconnectFence    = 2 * time.Second
	maxReconnectFence    = 10 * time.Second
	fenceReconnectWindow = 5 * time.Second
)

// reconnectFenceWait is the wait for an answer just after a reconnect:
// how long a worker with this connection's options may take to reconnect
// once the broker is back, and a second more, within [minReconnectFence,
// maxReconnectFence]. That is two dial timeouts, a reconnect wait and its
// jitter: a worker may be in a dial to the address of a broker container
// that is not back yet, which hangs a whole dial timeout, and its next dial
// may come just before the restarted broker listens and hang again. With
// one dial timeout (3.35 s for forq's commands), a holder in a compose
// stack once answered 4 s after the asker had started to ask, too late.
func reconnectFenceWait(o nats.Options) time.Duration {
	jitter := o.ReconnectJitter
	if o.Secure || o.TLSConfig != nil {
		jitter = o.ReconnectJitterTLS
	}
	d := 2*o.Timeout + o.ReconnectWait + jitter + time.Second
	return min(max(d, minReconnectFence), maxReconnectFence)
}

// restartGuard is a worker's side of the above while Run runs.
type restartGuard struct {
	w           *Worker
	reconnected atomic.Int64 // UnixNano of the last reconnect; 0: none yet
	subs        []*nats.Subscription
	status      chan nats.Status
	done        sync.WaitGroup
}

// guardRestarts answers the "still running?" questions of w's queues and
// sends heartbeats on reconnect, until stop is called (after every handler
// has returned).
func (w *Worker) guardRestarts(queues []string) (*restartGuard, error) {
	g := &restartGuard{w: w}
	for _, q := range queues {
		sub, err := w.nc.Subscribe(wire.RunningSubject(q), g.answer)
		if err != nil {
			g.stop()
			return nil, err
		}
		g.subs = append(g.subs, sub)
	}
	g.status = w.nc.StatusChanged(nats.CONNECTED)
	g.done.Go(func() {
		for range g.status {
			g.reconnected.Store(time.Now().UnixNano())
			n := g.beatAll()
			w.log.Info("reconnected: sent a heartbeat for every running task", "tasks", n)
		}
	})
	return g, nil
}

func (g *restartGuard) stop() {
	for _, s := range g.subs {
		_ = s.Unsubscribe()
	}
	if g.status != nil {
		g.w.nc.RemoveStatusListener(g.status) // closes it: the goroutine returns
	}
	g.done.Wait()
}

// beatAll sends a heartbeat for every task this worker runs, and returns
// how many.
func (g *restartGuard) beatAll() int {
	w := g.w
	var beats []beat
	w.mu.Lock()
	for r := range w.running {
		if r.msg != nil {
			beats = append(beats, beat{r.msg, r.idx, r.gen})
		}
	}
	w.mu.Unlock()
	// Sent as the heartbeat loop sends them, so that the broker's reply
	// confirms the lease (lease.go) as of the reconnect.
	now := time.Now()
	for _, b := range beats {
		w.sendBeat(b, now)
	}
	return len(beats)
}

// answer answers a "still running?" question if this worker runs the task,
// after a heartbeat for it.
func (g *restartGuard) answer(q *nats.Msg) {
	seq, err := strconv.ParseUint(string(q.Data), 10, 64)
	if err != nil || q.Reply == "" {
		return
	}
	m := g.w.runningMsg(seq, nil)
	if m == nil {
		return
	}
	_ = m.InProgress()
	_ = q.Respond([]byte(strconv.Itoa(g.w.pid) + " " + g.w.name))
}

// runningMsg returns the delivery of the task of stream sequence seq that a
// handler of this worker runs, other than skip, or nil.
func (w *Worker) runningMsg(seq uint64, skip *pull.Msg) *pull.Msg {
	w.mu.Lock()
	defer w.mu.Unlock()
	for r := range w.running {
		if r.msg == nil || r.msg == skip {
			continue
		}
		if a, ok := wire.ParseAck(r.msg.Reply()); ok && a.Seq == seq {
			return r.msg
		}
	}
	return nil
}

// runsElsewhere is called for a redelivered task before anything else: it
// reports whether a live worker (this one or another) still runs the task;
// then its delivery ends (oElsewhere) with a nak to come again after the
// ack wait (d.delay), should that run's heartbeats stop. See above.
func (w *Worker) runsElsewhere(d *delivery) bool {
	t := d.t
	if wire.HasLock(t.Header) {
		return false
	}
	ack, ok := wire.ParseAck(t.msg.Reply())
	if !ok {
		return false
	}
	seq := ack.Seq
	if m := w.runningMsg(seq, t.msg); m != nil {
		_ = m.InProgress()
		d.holder = "this worker"
	} else {
		wait := fenceWait
		if at := w.guard.Load(); at != nil {
			long := reconnectFenceWait(w.nc.Opts)
			if rc := at.reconnected.Load(); rc != 0 && time.Since(time.Unix(0, rc)) < fenceReconnectWindow+long {
				wait = long
			}
		}
		reply := w.ask(wire.RunningSubject(t.Queue), strconv.AppendUint(nil, seq, 10), wait)
		if reply == "" {
			return false // nobody runs it (or nobody could say so in time)
		}
		d.holder = "worker " + reply
	}
	d.delay = d.ackWait
	if d.delay <= 0 {
		d.delay = forq.DefaultAckWait
	}
	return true
}

// askEvery is how often a worker asks again while it waits for an answer:
// a core NATS request reaches only the workers subscribed when it is sent,
// and one still reconnecting subscribes again only once it is back.
const askEvery = 100 * time.Millisecond

// ask sends the question body on subject every askEvery until one worker
// answers or wait has passed, and returns the answer ("" for none). An
// answer to any of the questions counts, however late within wait: a
// worker that runs the task but is slow to answer (a loaded machine) is
// still heard.
func (w *Worker) ask(subject string, body []byte, wait time.Duration) string {
	deadline := time.Now().Add(wait)
	inbox := w.nc.NewInbox()
	sub, err := w.nc.SubscribeSync(inbox)
	if err != nil {
		return ""
	}
	defer func() { _ = sub.Unsubscribe() }()
	var next time.Time
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return ""
		}
		if !now.Before(next) {
			// An error (the connection is reconnecting and its buffer is
			// full) is a question not sent: the next tick asks again.
			_ = w.nc.PublishRequest(subject, inbox, body)
			next = now.Add(askEvery)
		}
		until := next
		if deadline.Before(until) {
			until = deadline
		}
		m, err := sub.NextMsg(until.Sub(now))
		switch {
		case err == nil && len(m.Data) > 0:
			return string(m.Data)
		case errors.Is(err, nats.ErrTimeout):
		case err == nil, errors.Is(err, nats.ErrNoResponders):
			// Nobody is subscribed yet: ask again at the next tick.
			time.Sleep(time.Until(until))
		default:
			return "" // the connection closed
		}
	}
}
