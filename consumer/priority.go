package consumer

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Priorities and several queues.
//
// A worker serves every priority level (forq.Priority) of each of its
// queues: 3 × len(Queues) consumers, the sources. One goroutine pulls from
// all of them on one subscription, with one pull request outstanding at a
// time, and never asks for more tasks than the worker has free slots. Each
// time slots are free it sweeps the sources in order:
//
//   - levels first, highest first: a high task of any of the worker's
//     queues goes before a normal one of any other, and a normal one before
//     a low one;
//   - within a level, queues in Config.Order: OrderStrict takes them in the
//     order of Config.Queues; OrderWeighted puts first, for each sweep, a
//     queue picked in proportion to Config.Weights (smooth weighted
//     round-robin), then the others in their order, so an empty queue's
//     turn falls to the others.
//
// Every source but the last is asked with a no-wait pull request (answered
// at once, with what it has or with 404), for the slots still free; the
// sweep stops when they are all taken. So a task enqueued at a higher level
// waits at most for the pull in flight when it came: a flood of low tasks
// delays a high one by at most one batch (at most Concurrency tasks, and no
// more than 256).
//
// When a sweep finds nothing at all, the worker long-polls one source, the
// normal level of the sweep's first queue (where most tasks go, so an idle
// worker picks a normal task up as soon as it is enqueued), for at most
// Config.IdlePoll (DefaultIdlePoll), then sweeps again. That bounds how long
// a task of another level or queue waits on an idle worker: IdlePoll plus a
// sweep's round trips.

// Order is how a worker with several queues chooses between them, within
// a priority level.
type Order string

// The orders.
const (
	// OrderStrict always prefers the earlier queue of Config.Queues: a
	// later queue's tasks start only when the earlier ones have none
	// (at that level).
	OrderStrict Order = "strict"
	// OrderWeighted picks the queue for each pull in proportion to
	// Config.Weights, falling back to the others when it is empty.
	OrderWeighted Order = "weighted"
)

// ParseOrder parses "strict" or "weighted"; "" is strict. The error wraps
// forq.ErrInvalidOption.
func ParseOrder(s string) (Order, error) {
	switch Order(s) {
	case "", OrderStrict:
		return OrderStrict, nil
	case OrderWeighted:
		return OrderWeighted, nil
	}
	return "", fmt.Errorf("%w: order %q: use strict or weighted", forq.ErrInvalidOption, s)
}

// DefaultIdlePoll bounds the long poll of an idle worker: how late it may
// notice a task on a level or queue other than the one it waits on.
const DefaultIdlePoll = 250 * time.Millisecond

// MaxWeight is the largest weight of a queue.
const MaxWeight = 1000

// checkOrder validates and fills Config.Order and Config.Weights.
func checkOrder(cfg *Config) error {
	o, err := ParseOrder(string(cfg.Order))
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	cfg.Order = o
	if cfg.IdlePoll < 0 {
		return fmt.Errorf("consumer: %w: idle poll %s is negative", forq.ErrInvalidOption, cfg.IdlePoll)
	}
	if cfg.IdlePoll == 0 {
		cfg.IdlePoll = DefaultIdlePoll
	}
	seen := map[string]bool{}
	for _, q := range cfg.Queues {
		if seen[q] {
			return fmt.Errorf("consumer: %w: queue %q is listed twice", forq.ErrInvalidOption, q)
		}
		seen[q] = true
	}
	if len(cfg.Weights) > 0 && o != OrderWeighted {
		return fmt.Errorf("consumer: %w: weights need OrderWeighted", forq.ErrInvalidOption)
	}
	for q, n := range cfg.Weights {
		if !seen[q] {
			return fmt.Errorf("consumer: %w: weight for queue %q, which is not one of the worker's queues %v", forq.ErrInvalidOption, q, cfg.Queues)
		}
		if n < 1 || n > MaxWeight {
			return fmt.Errorf("consumer: %w: weight %d of queue %q: must be 1 to %d", forq.ErrInvalidOption, n, q, MaxWeight)
		}
	}
	return nil
}

// source is one consumer a worker pulls from: a level of a queue.
type source struct {
	queue   string
	prio    forq.Priority
	subject string // its pull request subject
	tasks   string // the subject its tasks are published on
	ackWait time.Duration

	// The pull loop's view of the source; see hints.go.
	empty   bool      // its last pull found nothing
	checked time.Time // when that pull was
	sub     *nats.Subscription
	seen    *atomic.Int64 // when a task was last published to it (UnixNano), while sub is on
}

// sources declares the consumers of every level of the worker's queues.
// byQueue[i][l] is queue i's level forq.Priorities[l].
func (w *Worker) sources(ctx context.Context) (byQueue [][]source, cons []jetstream.Consumer, err error) {
	byQueue = make([][]source, len(w.cfg.Queues))
	for i, q := range w.cfg.Queues {
		for _, p := range forq.Priorities {
			c, err := topology.EnsureLevelConsumer(ctx, w.h.Tasks, q, p, w.cfg.AckWait)
			if err != nil {
				return nil, nil, err
			}
			info := c.CachedInfo()
			byQueue[i] = append(byQueue[i], source{queue: q, prio: p, subject: pullSubject(info.Stream, info.Name), tasks: forq.LevelSubject(q, p), ackWait: info.Config.AckWait, seen: new(atomic.Int64)})
			cons = append(cons, c)
		}
	}
	return byQueue, cons, nil
}

// scheduler orders the sources for each sweep.
type scheduler struct {
	byQueue [][]source
	order   Order
	weights []int // per queue, with OrderWeighted
	credit  []int // smooth weighted round-robin state
	qorder  []int
	sweep   []*source
}

func newScheduler(byQueue [][]source, cfg Config) *scheduler {
	s := &scheduler{byQueue: byQueue, order: cfg.Order}
	if cfg.Order == OrderWeighted {
		for _, q := range cfg.Queues {
			n := cfg.Weights[q]
			if n == 0 {
				n = 1
			}
			s.weights = append(s.weights, n)
		}
		s.credit = make([]int, len(cfg.Queues))
	}
	return s
}

// next returns the sources of the next sweep, in order, and the index in
// it of the source to long-poll if the sweep finds nothing.
func (s *scheduler) next() (sweep []*source, idle int) {
	s.qorder = s.qorder[:0]
	first := 0
	if s.order == OrderWeighted && len(s.weights) > 1 {
		total := 0
		for i, n := range s.weights {
			s.credit[i] += n
			total += n
			if s.credit[i] > s.credit[first] {
				first = i
			}
		}
		s.credit[first] -= total
	}
	s.qorder = append(s.qorder, first)
	for i := range s.byQueue {
		if i != first {
			s.qorder = append(s.qorder, i)
		}
	}
	s.sweep = s.sweep[:0]
	for l := range forq.Priorities {
		for _, q := range s.qorder {
			src := &s.byQueue[q][l]
			if src.prio == forq.PriorityNormal && q == first {
				idle = len(s.sweep)
			}
			s.sweep = append(s.sweep, src)
		}
	}
	return s.sweep, idle
}

// pullLoop pulls tasks from every source while ctx lives and dispatches
// each to a runner. Each task holds a slot.
func (w *Worker) pullLoop(ctx context.Context, d *dispatcher, byQueue [][]source) {
	backoff := 100 * time.Millisecond
	fail := func(src *source, err error) bool {
		w.log.Warn("fetch failed; retrying", "queue", src.queue, "priority", src.prio.String(), "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, 5*time.Second)
		return true
	}
	// Deliveries go to one subscription for the worker's life; each pull
	// request has a reply subject of its own below it, so that the status
	// closing a request is not taken for that of another.
	inbox := w.nc.NewInbox()
	msgs := make(chan *nats.Msg, 4*256)
	var sub *nats.Subscription
	for {
		var err error
		if sub, err = w.nc.ChanSubscribe(inbox+".*", msgs); err == nil {
			break
		}
		if !fail(&byQueue[0][0], err) {
			return
		}
	}
	defer func() { _ = sub.Unsubscribe() }()
	defer unhint(byQueue)
	sched := newScheduler(byQueue, w.cfg)
	idleWait := w.cfg.FetchWait
	if len(byQueue)*len(forq.Priorities) > 1 {
		idleWait = min(idleWait, w.cfg.IdlePoll)
	}
	p := &puller{w: w, d: d, msgs: msgs, inbox: inbox, timer: time.NewTimer(time.Hour)}
	p.timer.Stop()
	for ctx.Err() == nil {
		if !w.acquire(ctx) {
			return
		}
		k := w.gather(ctx, p.timer)
		if max := int64(w.cfg.MaxTasks); max > 0 {
			left := max - w.claimed.Load()
			if left <= 0 {
				w.release(k)
				return
			}
			if int64(k) > left {
				w.release(k - int(left))
				k = int(left)
			}
			w.claimed.Add(int64(k))
		}
		sweep, idle := sched.next()
		got := 0
		var failed *source
		var err error
		now := time.Now()
		// The sources this sweep asks: those not known to be empty.
		asks := p.asks[:0]
		for i, src := range sweep {
			if !w.skip(src, now, idleWait) {
				asks = append(asks, i)
			}
		}
		p.asks = asks
		polled := false
		for _, i := range asks {
			if got == k {
				break
			}
			src := sweep[i]
			// When the idle source is the only one left to ask, wait
			// on it at once, as an idle worker would after a no-wait
			// pull found nothing: a queue the workers keep up with
			// then streams into one request, not into many small ones.
			wait := time.Duration(0)
			if i == idle && len(asks) == 1 {
				wait, polled = idleWait, true
			}
			var n int
			n, err = p.pull(ctx, src, k-got, wait)
			got += n
			if err != nil {
				failed = src
				break
			}
			w.pulled(src, n, now)
		}
		if got == 0 && err == nil && !polled && ctx.Err() == nil {
			src := sweep[idle]
			got, err = p.pull(ctx, src, k, idleWait)
			if err != nil {
				failed = src
			} else {
				w.pulled(src, got, time.Now())
			}
		}
		w.unclaim(k - got)
		w.release(k - got)
		if err != nil {
			if !fail(failed, err) {
				return
			}
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// maxPull is the most tasks one pull request asks for.
const maxPull = 256

// pullGather is how long a busy worker waits for more of its slots to
// free up before it pulls: see gather.
const pullGather = time.Millisecond

// gather takes the slots for the next pull: the one already acquired and
// every other free one. While the worker is busy, though (other tasks
// still hold slots), and fewer than half the slots it may pull for are
// free, it waits up to pullGather for more to free up. Fast tasks then
// come in a few large pulls rather than in many small ones, each of which
// costs the broker a request and the worker a round trip; a slow task
// waits at most pullGather more to start.
func (w *Worker) gather(ctx context.Context, timer *time.Timer) int {
	most := min(cap(w.slots), maxPull)
	k := 1
	for k < most && w.tryAcquire() {
		k++
	}
	if k >= most/2 || len(w.slots) == k {
		return k
	}
	timer.Reset(pullGather)
	defer timer.Stop()
	for k < most/2 {
		select {
		case w.slots <- struct{}{}:
			k++
		case <-timer.C:
			return k
		case <-ctx.Done():
			return k
		}
	}
	for k < most && w.tryAcquire() {
		k++
	}
	return k
}

// puller sends pull requests and takes their answers.
type puller struct {
	asks  []int // scratch: the sources a sweep asks
	w     *Worker
	d     *dispatcher
	msgs  chan *nats.Msg
	inbox string
	req   uint64
	body  []byte
	timer *time.Timer
}

// pull asks src for up to k tasks, waiting at most wait at the broker, or
// not at all (no_wait) if wait is 0, and dispatches what comes. It returns
// how many tasks came.
func (p *puller) pull(ctx context.Context, src *source, k int, wait time.Duration) (int, error) {
	w := p.w
	p.req++
	reply := p.inbox + "." + strconv.FormatUint(p.req, 10)
	p.body = pullBody(p.body, k, wait)
	if err := w.nc.PublishRequest(src.subject, reply, p.body); err != nil {
		return 0, err
	}
	// The broker ends the request at its expiry, or at once for a no-wait
	// one; the margin covers a request lost with the connection.
	p.timer.Reset(wait + time.Second)
	n, err := w.receive(ctx, p.d, src, p.msgs, reply, k, p.timer)
	p.timer.Stop()
	return n, err
}

// receive takes the answers to the pull request with reply subject reply
// for k tasks of src, dispatching each, until the request ends. It returns
// how many tasks came.
func (w *Worker) receive(ctx context.Context, d *dispatcher, src *source, msgs <-chan *nats.Msg, reply string, k int, timer *time.Timer) (int, error) {
	n := 0
	for n < k {
		var m *nats.Msg
		select {
		case m = <-msgs:
		case <-timer.C:
			return n, nil
		}
		if status, done, err := pullStatus(m); status {
			if done && m.Subject == reply {
				return n, err
			}
			continue // a heartbeat, or the end of an earlier request
		}
		n++
		tm := &taskMsg{m: m, nc: w.nc, ack: w.acker}
		w.acker.received()
		if ctx.Err() != nil {
			// Stopping: give it back at once.
			_ = tm.Nak()
			w.unclaim(1)
			w.release(1)
			continue
		}
		d.dispatch(job{queue: src.queue, prio: src.prio, ackWait: src.ackWait, m: tm})
	}
	return n, nil
}
