package pull

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Priorities and several queues.
//
// An engine serves every priority level (forq.Priority) of each of its
// queues: 3 × len(Queues) consumers, the sources. One goroutine pulls from
// all of them on one subscription, with one pull request outstanding at a
// time, and never asks for more tasks than the worker has free slots. Each
// time slots are free it sweeps the sources in order:
//
//   - levels first, highest first: a high task of any of the worker's
//     queues goes before a normal one of any other, and a normal one before
//     a low one;
//   - within a level, queues in order: by default (strict order) in the
//     order of Config.Queues; with Config.Weights (weighted order), first,
//     for each sweep, a queue picked in proportion to its weight (smooth
//     weighted round-robin), then the others in their order, so an empty
//     queue's turn falls to the others.
//
// Every source but the last is asked with a no-wait pull request (answered
// at once, with what it has or with 404), for the slots still free; the
// sweep stops when they are all taken. So a task enqueued at a higher level
// waits at most for the pull in flight when it came: a flood of low tasks
// delays a high one by at most one batch (at most Concurrency tasks, and no
// more than 256).
//
// When a sweep finds nothing at all, the engine long-polls one source, the
// normal level of the sweep's first queue (where most tasks go, so an idle
// worker picks a normal task up as soon as it is enqueued), for at most
// Config.IdlePoll, then sweeps again; a task published meanwhile to a
// level it skipped ends the wait at once (see interrupt.go). IdlePoll so
// bounds how long a task of another level that was not published anew (a
// redelivered one) waits on an idle worker: IdlePoll plus a sweep's round
// trips.
//
// The sweep after a long poll that found nothing does not ask that source
// with a no-wait pull first: it long-polls it again after the other
// sources, as the no-wait pull would have found it (nothing, or the tasks
// the long poll then gets at once). An idle worker so sends, per IdlePoll,
// one long poll and a re-check of each used level not known to be empty
// (see hints.go), not one more no-wait pull of the normal level: for a
// worker of one queue whose high and low levels were never used, one
// request per IdlePoll.

// source is one consumer the engine pulls from: a level of a queue.
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
	// used is set once the source may hold a task this engine did not
	// see published: it had tasks, pending or held, when it was declared,
	// a task was published to it, or the connection was lost meanwhile.
	// Only a used source is re-checked for tasks not published anew.
	used *atomic.Bool
}

// declare declares the consumers of every level of cfg's queues, each
// retried until the broker takes it or ctx ends. byQueue[i][l] is queue
// i's level forq.Priorities[l]; used holds the used mark of each high and
// low level, by subject (see schedules.go). The hint subscription of each high and low
// level (see hints.go) is made before its consumer is looked up, so that a
// task of that level is either counted in what the lookup finds or seen by
// the subscription (see used, hints.go); poke is the engine's wake-up.
func declare(ctx context.Context, cfg *Config, poke chan struct{}, used map[string]*atomic.Bool) (byQueue [][]source, err error) {
	byQueue = make([][]source, len(cfg.Queues))
	defer func() {
		if err != nil {
			unhint(byQueue)
		}
	}()
	for i, q := range cfg.Queues {
		for _, p := range forq.Priorities {
			src := source{queue: q, prio: p, tasks: wire.LevelSubject(q, p), seen: new(atomic.Int64), used: used[wire.LevelSubject(q, p)]}
			if src.used == nil { // a normal level
				src.used = new(atomic.Bool)
				src.used.Store(true)
			} else if src.sub, err = hint(cfg.Conn, &src, poke); err != nil {
				return byQueue, err
			}
			byQueue[i] = append(byQueue[i], src)
			c, err := topology.Retry(ctx, cfg.Conn, cfg.Logger, func(ctx context.Context) (jetstream.Consumer, error) {
				return topology.EnsureLevelConsumer(ctx, cfg.Conn, cfg.Stream, q, p, cfg.AckWait)
			})
			if err != nil {
				return byQueue, err
			}
			info := c.CachedInfo()
			s := &byQueue[i][len(byQueue[i])-1]
			s.subject, s.ackWait = pullSubject(info.Stream, info.Name), info.Config.AckWait
			if info.NumPending > 0 || info.NumAckPending > 0 || info.NumRedelivered > 0 {
				s.used.Store(true)
			}
		}
	}
	return byQueue, nil
}

// scheduler orders the sources for each sweep.
type scheduler struct {
	byQueue [][]source
	weights []int // per queue, in weighted order; nil in strict order
	credit  []int // smooth weighted round-robin state
	qorder  []int
	sweep   []*source
}

// newScheduler returns the scheduler of byQueue: in weighted order if
// weights (one per queue) is not nil, else in strict order.
func newScheduler(byQueue [][]source, weights []int) *scheduler {
	s := &scheduler{byQueue: byQueue, weights: weights}
	if weights != nil {
		s.credit = make([]int, len(weights))
	}
	return s
}

// next returns the sources of the next sweep, in order, and the index in
// it of the source to long-poll if the sweep finds nothing.
func (s *scheduler) next() (sweep []*source, idle int) {
	s.qorder = s.qorder[:0]
	first := 0
	if len(s.weights) > 1 {
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
