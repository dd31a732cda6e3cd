package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/record"
	"github.com/nats-io/nats.go"
)

// Leases and abandoned handlers.
//
// A running task is leased to its worker for the queue's ack wait, and each
// heartbeat (an in-progress ack, +WPI) renews the lease. The worker sends
// its heartbeats as requests: nats-server answers an acknowledgement that
// has a reply subject, +WPI included, with an empty message once it has
// processed it (consumer.processAck: "Ack the ack if requested"). The
// reply subject names the runner, its task and the send time, so a reply
// confirms the lease as of that send time. A task whose last confirmed
// heartbeat (or, before the first, its start) is older than the ack wait
// has lost its lease: the broker may have given it to another worker,
// which happens when this worker was frozen (SIGSTOP, a VM pause), starved
// of CPU, or cut off from the broker. Its handler's context is canceled
// with ErrLeaseLost, and whatever the handler returns, this worker does
// not ack or nak the task, nor record its outcome: that is up to its
// other delivery. The runner checks the lease itself when the handler
// returns, so a worker resumed from a freeze does not ack a task that ran
// on before the loop noticed.
//
// A lease starts when the engine receives the message (the broker's ack
// wait started no later), not when a runner gets to it: a delivery that
// waited longer than the ack wait for a runner (a starved process) is not
// run at all (oStale), as the broker may have given it to another worker;
// a redelivery renews its lease with an in-progress ack before its slower
// checks (restart.go, attempts.go). Either way, a lease lost is no attempt
// of the task, and, since this worker is alive, no crash: the run writes
// that it ended to the task's record (markEnded) unless a later run wrote
// there first, so that its redelivery neither runs alone as a suspect nor
// counts a crash (attempts.go).
//
// A handler that ignores its context goes on past its task's timeout; at
// the timeout plus Config.AbandonGrace the heartbeat loop abandons it: its
// heartbeats stop, its task is settled as timed out (retried or
// dead-lettered, as any timeout), its slot and runner are freed, and the
// worker stops fetching and makes Run return ErrAbandoned once the other
// running tasks are done, so that the process is replaced. The abandoned
// goroutine is left behind; when (if) its handler returns, its runner
// exits without acking or recording anything: its task's message was
// settled already (and a settled message refuses Task.InProgress), and
// its lock, if it holds one, is released only then, since it still ran.
//
// A stop abandons the same way the handlers that still run AbandonGrace
// after the end of its grace period (their contexts canceled), handing
// their tasks back, so that a stop always ends.

// heartbeatTick is how often the heartbeat loop looks for tasks due one:
// a quarter of the shortest beat of the queues' ack waits, so that a
// task's first heartbeat goes out between ⅓ and 5⁄12 of its ack wait. 0
// means no heartbeats.
func heartbeatTick(ackWaits []time.Duration) time.Duration {
	var tick time.Duration
	for _, aw := range ackWaits {
		if aw > 0 {
			b := beatOf(aw) / 4
			if tick == 0 || b < tick {
				tick = b
			}
		}
	}
	return tick
}

// beatOf is the interval of a task's heartbeats (in-progress acks).
func beatOf(ackWait time.Duration) time.Duration { return max(ackWait/3, 100*time.Millisecond) }

// heartbeats tells the broker every beat that each running task is still
// being worked on, until ctx ends. On the same ticks it cancels the
// handlers whose lease is lost and abandons those past their timeout and
// grace.
func (w *Worker) heartbeats(ctx context.Context, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	var due []beat
	var late []*runner
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due, late = due[:0], late[:0]
			w.mu.Lock()
			for r := range w.running {
				if r.t == nil {
					continue
				}
				if !r.abandonAt.IsZero() && now.After(r.abandonAt) {
					late = append(late, r)
				}
				if r.msg == nil {
					continue
				}
				if r.ackWait > 0 && now.Sub(r.lastOK) > r.ackWait {
					w.loseLease(r)
					continue
				}
				if r.beat > 0 && !now.Before(r.next) {
					due = append(due, beat{r.msg, r.idx, r.gen})
					r.next = now.Add(r.beat)
				}
			}
			w.mu.Unlock()
			for _, b := range due {
				w.sendBeat(b, now)
			}
			for _, r := range late {
				w.abandon(r, now, false)
			}
			clear(due)
			clear(late)
		}
	}
}

// beat is a heartbeat to send: a task's message and who it is for.
type beat struct {
	msg      *pull.Msg
	idx, gen uint64
}

// sendBeat sends an in-progress ack for b as a request whose reply (see
// beatConfirmed) confirms the lease as of now.
func (w *Worker) sendBeat(b beat, now time.Time) {
	reply := w.beatInbox + "." + strconv.FormatUint(b.idx, 10) + "." + strconv.FormatUint(b.gen, 10) + "." + strconv.FormatInt(now.UnixNano(), 10)
	_ = b.msg.Heartbeat(reply)
}

// beatConfirmed is the broker's reply to a heartbeat: it moves the lease
// of the task it was for to the heartbeat's send time.
func (w *Worker) beatConfirmed(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, w.beatInbox+".")
	if !ok {
		return
	}
	f := strings.Split(rest, ".")
	if len(f) != 3 {
		return
	}
	idx, err1 := strconv.ParseUint(f[0], 10, 64)
	gen, err2 := strconv.ParseUint(f[1], 10, 64)
	ns, err3 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return
	}
	sent := time.Unix(0, ns)
	w.mu.Lock()
	defer w.mu.Unlock()
	for r := range w.running {
		if r.idx == idx {
			if r.gen == gen && r.t != nil && !r.lost && sent.After(r.lastOK) {
				r.lastOK = sent
			}
			return
		}
	}
}

// loseLease cancels r's handler: its lease is lost. w.mu is held.
func (w *Worker) loseLease(r *runner) {
	r.lost, r.msg = true, nil
	if r.cancel != nil {
		r.cancel(ErrLeaseLost)
	}
	w.log.Warn("task lease lost: no heartbeat confirmed within the ack wait; canceling its handler, and leaving the task to the broker",
		"task", r.id, "ack_wait", r.ackWait, "last_confirmed", r.lastOK)
}

// holdsAbandoned reports whether this worker abandoned a handler.
func (w *Worker) holdsAbandoned() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.abandoned > 0
}

// abandonRunning abandons every handler still running at the end of a
// stop: their tasks are handed back, not failed.
func (w *Worker) abandonRunning(now time.Time) {
	w.mu.Lock()
	var rs []*runner
	for r := range w.running {
		if r.t != nil && r.abandoned == nil {
			rs = append(rs, r)
		}
	}
	w.mu.Unlock()
	for _, r := range rs {
		w.abandon(r, now, true)
	}
}

// abandon gives up on the handler of runner r, which ran past its task's
// timeout and grace, or past the end of a stop if stopping (see the top of
// this file).
func (w *Worker) abandon(r *runner, now time.Time, stopping bool) {
	w.mu.Lock()
	t := r.t
	if t == nil || r.abandoned != nil {
		w.mu.Unlock() // it returned meanwhile
		return
	}
	done := make(chan struct{})
	r.abandoned, r.msg = done, nil
	w.leave(t)
	delete(w.running, r)
	w.abandoned++
	lost, started, cause := r.lost, r.started, r.timedOut
	w.mu.Unlock()

	w.inflight.Add(-1)
	w.processed.Add(1)
	// The handler may still read its Task: settle a copy.
	tc := *t
	d := &delivery{t: &tc, log: taskLog{w: w, t: &tc},
		res:    forq.Result{ID: tc.ID, Queue: tc.Queue, Type: tc.Type, Attempts: tc.Attempt, WorkerPID: w.pid, Host: w.name, StartedAt: started.UTC(), FinishedAt: now.UTC()},
		record: tc.alone || w.recorded(&tc)}
	o := oAbandoned // a hand-back, as at the end of a stop's grace
	if stopping {
		d.log.get().Error("handler ignored its context after the grace period: abandoned; its task is handed back", "grace", w.abandonGrace)
	} else {
		d.log.get().Error("handler ignored its context past its timeout: abandoned; the task is settled as timed out and this worker will be replaced",
			"timeout_cause", cause, "grace", w.abandonGrace)
		o, d.err = oFailed, fmt.Errorf("%w; its handler ignored its context for %s more and was abandoned", cause, w.abandonGrace)
	}
	// Its slot and runner are freed, fetching stops, and the engine runs
	// the settlement.
	w.eng.Abandon(func() {
		defer close(done)
		if !lost { // else not this worker's to settle
			w.settle(d, o)
		}
	})
}

// leaseEnded is the error of the record markEnded writes.
const leaseEnded = "its lease ran out on a living worker (starved or frozen); not an attempt"

// markEnded writes to the task's record that this run ended without a
// failure and without settling its message, its lease having run out
// (oLeaseLost, oStale), so that its next delivery does not take it for a
// lost one (attempts.go): neither a suspect nor, if it ran alone, a crash.
// It writes only with compare-and-set over the revision this delivery
// last wrote or read, or over a record of no later run of this message,
// so never over another run's record nor over a final state. Rare path:
// one read and one write at most.
func (w *Worker) markEnded(d *delivery) {
	t := d.t
	if t.lock == nil && d.lockKey != "" {
		return // its runs are counted by its lock, not taken yet
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seq, run := t.seq(), t.run()
	res := forq.Result{ID: t.ID, Queue: t.Queue, Type: t.Type, State: forq.StateQueued, WorkerPID: w.pid, Host: w.name,
		Error: leaseEnded, Seq: seq, Run: run, Failures: t.Attempt - 1, History: t.history}
	rev := t.rev
	if rev == 0 {
		cur, r, err := record.New(w.h.Results).Get(ctx, t.ID)
		if err != nil && !errors.Is(err, record.ErrMalformed) {
			d.log.get().Warn("recording the end of a lease failed", "err", err)
			return
		}
		res.Failures, res.History = 0, nil
		if cur != nil {
			if cur.State.Final() || cur.Seq == seq && cur.Run >= run {
				return
			}
			if cur.Seq == seq {
				res.Failures, res.History = cur.Failures, cur.History
			}
		}
		rev = r
	}
	res.Attempts = res.Failures + 1
	b, err := json.Marshal(&res)
	if err == nil {
		if rev == 0 {
			_, err = w.h.Results.Create(ctx, t.ID, b)
		} else {
			_, err = w.h.Results.Update(ctx, t.ID, b, rev)
		}
	}
	if err != nil && !kvcas.IsConflict(err) {
		d.log.get().Warn("recording the end of a lease failed", "err", err)
	}
}

// leaseKeeper sends in-progress acks for a delivery that is not yet its
// runner's task (see keepLease).
type leaseKeeper struct {
	done chan struct{}
	wg   sync.WaitGroup
	last atomic.Int64 // UnixNano of the last in-progress ack sent; 0: none
}

// keepLease sends an in-progress ack for m at once and then every beat of
// ackWait until stop: for a redelivery while admit checks it, before its
// runner's heartbeats cover it. These acks are sent, not confirmed: the
// runner's first heartbeat is due a beat after the last.
func keepLease(m *pull.Msg, ackWait time.Duration) *leaseKeeper {
	k := &leaseKeeper{done: make(chan struct{})}
	if ackWait <= 0 {
		return k
	}
	k.send(m)
	k.wg.Go(func() {
		t := time.NewTicker(beatOf(ackWait))
		defer t.Stop()
		for {
			select {
			case <-k.done:
				return
			case <-t.C:
				k.send(m)
			}
		}
	})
	return k
}

func (k *leaseKeeper) send(m *pull.Msg) {
	if m.InProgress() == nil {
		k.last.Store(time.Now().UnixNano())
	}
}

// stop ends the in-progress acks and returns when the last was sent (zero
// if none was).
func (k *leaseKeeper) stop() time.Time {
	close(k.done)
	k.wg.Wait()
	if n := k.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}
