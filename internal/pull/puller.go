package pull

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The pull protocol.
//
// The engine pulls from a queue's consumer with JetStream's pull protocol
// on one subscription it keeps for as long as it runs, rather than with
// jetstream.Consumer.Fetch, which subscribes and unsubscribes for every
// batch and passes each message through a goroutine of its own (and a new
// timer) before the worker sees it. The protocol is the one Fetch speaks:
// a request {"batch": k, "expires": wait} (or {"batch": k, "no_wait": true})
// to $JS.API.CONSUMER.MSG.NEXT, answered by up to k messages and, if fewer
// came, a status message (408 when the request expired, 404 when a no-wait
// one found nothing). Only one request is outstanding at a time, for all
// the engine's queues and priority levels (see scheduler.go), and it asks
// for no more tasks than the worker has free slots, so a busy worker holds
// no task it cannot start.

// maxPull is the most tasks one pull request asks for.
const maxPull = 256

// pullGather is how long a busy worker waits for more of its slots to
// free up before it pulls: see gather.
const pullGather = time.Millisecond

// RetryFirst and RetryMax bound the pull loop's wait after a failed pull:
// RetryFirst after the first failure, doubled after each further one up
// to RetryMax, and RetryFirst again after a pull that works.
//
// RetryMax is what a worker may lag behind a broker that comes back: on a
// cluster, a consumer whose leader died answers "503 no responders" until
// its new leader is elected (4 to 9 s after a SIGKILL, by NATS's election
// timeouts), and a worker that had backed off to 3.2 s ran tasks again up
// to 3.2 s after the queue did. At one pull a second per worker, a broker
// that is down is not hammered.
const (
	RetryFirst = 100 * time.Millisecond
	RetryMax   = time.Second
)

// pullLoop pulls tasks from every source while ctx lives and dispatches
// each to a runner. Each task holds a slot.
func (e *Engine) pullLoop(ctx context.Context) {
	backoff := RetryFirst
	fail := func(src *source, err error) bool {
		e.cfg.Logger.Warn("fetch failed; retrying", "queue", src.queue, "priority", src.prio.String(), "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, RetryMax)
		return true
	}
	// Deliveries go to one subscription (replaced only when an idle long
	// poll is woken: see interrupt.go); each pull request has a reply
	// subject of its own below it, so that the status closing a request
	// is not taken for that of another.
	sched := newScheduler(e.byQueue, e.cfg.Weights)
	idleWait := e.cfg.FetchWait
	if len(e.byQueue)*len(forq.Priorities) > 1 {
		idleWait = min(idleWait, e.cfg.IdlePoll)
	}
	p := &puller{e: e, msgs: make(chan *nats.Msg, 4*maxPull), timer: time.NewTimer(time.Hour), idleWait: idleWait, blindWait: min(idleWait, blindPoll)}
	p.timer.Stop()
	for {
		err := p.subscribe()
		if err == nil {
			break
		}
		if !fail(&e.byQueue[0][0], err) {
			return
		}
	}
	defer p.unsubscribe()
	defer unhint(e.byQueue)
	for ctx.Err() == nil {
		if !e.acquire(ctx) {
			return
		}
		k := e.gather(ctx, p.timer)
		if k = e.claim(k); k == 0 {
			return
		}
		got, failed, err := p.sweep(ctx, sched.next, k)
		e.Unclaim(k - got)
		e.release(k - got)
		if err != nil {
			if !fail(failed, err) {
				return
			}
			continue
		}
		backoff = RetryFirst
	}
}

// claim counts k tasks about to be pulled toward Config.MaxTasks, and
// returns how many may be: k, or fewer (0 when the worker ran its maximum),
// releasing the slots of the others.
func (e *Engine) claim(k int) int {
	most := int64(e.cfg.MaxTasks)
	if most <= 0 {
		return k
	}
	left := most - e.claimed.Load()
	if left <= 0 {
		e.release(k)
		return 0
	}
	if int64(k) > left {
		e.release(k - int(left))
		k = int(left)
	}
	e.claimed.Add(int64(k))
	return k
}

// sweep asks the sources of the next sweep, in order, for up to k tasks in
// all, and long-polls one if none had any (see longPoll). It returns how
// many tasks came, and the source whose pull failed, with its error.
func (p *puller) sweep(ctx context.Context, next func() ([]*source, int), k int) (got int, failed *source, err error) {
	e := p.e
	// A wake-up from before this sweep is news its sources show (see
	// hints.go): only one that comes later ends its long poll.
	select {
	case <-e.poke:
	default:
	}
	e.useAll()
	sweep, idle := next()
	now := time.Now()
	lp, wait, wake := p.longPoll(sweep, idle, now)
	// The sources this sweep asks: those not known to be empty. The idle
	// source whose long poll just ended with nothing is not asked with a
	// no-wait pull first: it is long-polled again at the end of the
	// sweep, as at once as a no-wait pull would be answered.
	asks := p.asks[:0]
	for i, src := range sweep {
		if i == idle && src == p.polledEmpty {
			continue
		}
		if !src.skip(now, p.idleWait) {
			asks = append(asks, i)
		}
	}
	p.asks = asks
	p.polledEmpty = nil
	polled := false
	for _, i := range asks {
		if got == k {
			break
		}
		src := sweep[i]
		// When the source to long-poll is the only one left to ask,
		// wait on it at once, as an idle worker would after a no-wait
		// pull found nothing: a queue the workers keep up with then
		// streams into one request, not into many small ones.
		w, wk := time.Duration(0), false
		if src == lp && len(asks) == 1 {
			w, wk, polled = wait, wake, true
		}
		var n int
		n, err = p.pull(ctx, src, k-got, w, wk)
		got += n
		if err != nil {
			return got, src, err
		}
		e.pulled(src, n, now)
		if polled && n == 0 && !p.woken && src == sweep[idle] {
			p.polledEmpty = src
		}
	}
	if got == 0 && !polled && ctx.Err() == nil {
		got, err = p.pull(ctx, lp, k, wait, wake)
		if err != nil {
			return got, lp, err
		}
		e.pulled(lp, got, time.Now())
		if got == 0 && !p.woken && lp == sweep[idle] {
			p.polledEmpty = lp
		}
	}
	return got, nil, nil
}

// gather takes the slots for the next pull: the one already acquired and
// every other free one. While the worker is busy, though (other tasks
// still hold slots), and fewer than half the slots it may pull for are
// free, it waits up to pullGather for more to free up. Fast tasks then
// come in a few large pulls rather than in many small ones, each of which
// costs the broker a request and the worker a round trip; a slow task
// waits at most pullGather more to start.
func (e *Engine) gather(ctx context.Context, timer *time.Timer) int {
	most := min(cap(e.slots), maxPull)
	k := 1
	for k < most && e.tryAcquire() {
		k++
	}
	if k >= most/2 || len(e.slots) == k {
		return k
	}
	timer.Reset(pullGather)
	defer timer.Stop()
	for k < most/2 {
		select {
		case e.slots <- struct{}{}:
			k++
		case <-timer.C:
			return k
		case <-ctx.Done():
			return k
		}
	}
	for k < most && e.tryAcquire() {
		k++
	}
	return k
}

// puller sends pull requests and takes their answers.
type puller struct {
	asks     []int // scratch: the sources a sweep asks
	e        *Engine
	msgs     chan *nats.Msg
	sub      *nats.Subscription // on inbox.*; nil after a failed renewal
	inbox    string
	req      uint64
	body     []byte
	timer    *time.Timer
	idleWait time.Duration // the long poll of an idle sweep
	// blindWait is the long poll of an idle sweep while a source it
	// does not wait on is not watched: see longPoll.
	blindWait time.Duration
	// woken is set when the last long poll was ended by a wake-up.
	woken bool
	// polledEmpty is the source the last sweep long-polled for nothing,
	// nil if it found tasks or did not long-poll: see sweep.
	polledEmpty *source
}

// pull asks src for up to k tasks, waiting at most wait at the broker, or
// not at all (no_wait) if wait is 0, and dispatches what comes. If wake
// is set, a wake-up (Engine.poke) ends the wait (see interrupt.go). It
// returns how many tasks came.
func (p *puller) pull(ctx context.Context, src *source, k int, wait time.Duration, wake bool) (int, error) {
	p.woken = false
	if p.sub == nil {
		if err := p.subscribe(); err != nil {
			return 0, err
		}
	}
	p.req++
	reply := p.inbox + "." + strconv.FormatUint(p.req, 10)
	p.body = pullBody(p.body, k, wait)
	if err := p.e.cfg.Conn.PublishRequest(src.subject, reply, p.body); err != nil {
		return 0, err
	}
	// The broker ends the request at its expiry, or at once for a no-wait
	// one; the margin covers a request lost with the connection.
	p.timer.Reset(wait + time.Second)
	var poke chan struct{}
	if wake {
		poke = p.e.poke
	}
	n, err := p.receive(ctx, src, reply, k, poke)
	p.timer.Stop()
	return n, err
}

// receive takes the answers to the pull request with reply subject reply
// for k tasks of src, dispatching each, until the request ends or, if poke
// is not nil, a wake-up comes on it. It returns how many tasks came.
func (p *puller) receive(ctx context.Context, src *source, reply string, k int, poke chan struct{}) (int, error) {
	e := p.e
	n := 0
	for n < k {
		var m *nats.Msg
		select {
		case m = <-p.msgs:
		case <-p.timer.C:
			return n, nil
		case <-poke:
			p.woken = true
			return n, p.renew()
		}
		if status, done, err := pullStatus(m); status {
			if done && m.Subject == reply {
				return n, err
			}
			continue // a heartbeat, or the end of an earlier request
		}
		if m.Sub != p.sub {
			p.stale(m)
			continue
		}
		n++
		tm := e.acker.Msg(m)
		if ctx.Err() != nil {
			// Stopping: give it back at once.
			_ = tm.HandBack()
			e.Unclaim(1)
			e.release(1)
			continue
		}
		e.disp.dispatch(Delivery{Queue: src.queue, Priority: src.prio, AckWait: src.ackWait, Msg: tm, Received: time.Now()})
	}
	return n, nil
}

// pullSubject is the API subject of pull requests on consumer cons of
// stream.
func pullSubject(stream, cons string) string {
	return jetstream.DefaultAPIPrefix + "CONSUMER.MSG.NEXT." + stream + "." + cons
}

// pullBody is the body of a pull request for k messages waiting at most
// wait; wait 0 makes a no-wait request, which the broker answers at once
// with the messages it has, or with a 404 status if it has none.
func pullBody(buf []byte, k int, wait time.Duration) []byte {
	buf = append(buf[:0], `{"batch":`...)
	buf = strconv.AppendInt(buf, int64(k), 10)
	if wait <= 0 {
		return append(buf, `,"no_wait":true}`...)
	}
	buf = append(buf, `,"expires":`...)
	buf = strconv.AppendInt(buf, wait.Nanoseconds(), 10)
	return append(buf, '}')
}

// pullStatus tells a status message (no payload, a Status header) from a
// task: done is true when it ends the request, err is set for a status
// that is an error (consumer deleted, no JetStream, ...).
func pullStatus(m *nats.Msg) (status, done bool, err error) {
	if len(m.Data) != 0 || m.Reply != "" {
		return false, false, nil
	}
	code := m.Header.Get("Status")
	if code == "" {
		return false, false, nil
	}
	switch code {
	case "100": // idle heartbeat or flow control: not an answer
		return true, false, nil
	case "404", "408": // no messages, request expired
		return true, true, nil
	}
	desc := m.Header.Get("Description")
	if code == "503" {
		desc = "no responders: JetStream not available"
	}
	return true, true, fmt.Errorf("pull request: %s %s", code, desc)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
