package producer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Delayed and periodic tasks are JetStream message schedules (ADR-51): a
// schedule is a message in forq.StreamTasks whose Nats-Schedule header says
// when, and whose Nats-Schedule-Target says where; when it fires the broker
// publishes its body and headers (less the Nats-Schedule* ones and
// Nats-Msg-Id) to the target, the task's queue. Nothing but the broker
// keeps time, so schedules survive restarts of every process and fire once
// however many processes run.
//
// A delayed task's schedule is on wire.ScheduleSubject(queue, id), fires
// once ("@at <RFC 3339 time>") and is removed by the broker when it fires;
// the task keeps its ID in a Forq-Id header. Periodic tasks are the
// admin package's (admin.Schedule).

// clock is a producer's view of the broker's clock.
//
// The offset between the two is measured once per Producer, on its first
// delayed enqueue: the producer asks the broker for FORQ_TASKS's stream
// info, whose "ts" field is the broker's clock when it answered, and takes
// the producer's clock halfway through the round trip as the same instant.
// Of three probes the one with the shortest round trip counts, so the
// error is under half of that round trip (well under a millisecond on one
// host). A delay d then fires at producer now + offset + latency + d, a
// time on the broker's clock, where latency (half the shortest round trip)
// is how long the enqueue takes to reach the broker: the delay runs from
// when the broker stores the task. A failed probe is not remembered.
type clock struct {
	now func() time.Time // the producer's clock; nil means time.Now

	mu       sync.Mutex
	offset   time.Duration // broker minus producer
	latency  time.Duration // one way, producer to broker
	measured bool
}

func (c *clock) read() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// brokerOffset returns how far the broker's clock is ahead of the
// producer's, measuring it the first time.
func (p *Producer) brokerOffset(ctx context.Context) (time.Duration, error) {
	c := &p.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.measured {
		return c.offset, nil
	}
	best := time.Duration(-1)
	for range 3 {
		t0 := c.read()
		s, err := p.js.Stream(ctx, forq.StreamTasks)
		t1 := c.read()
		if err != nil {
			return 0, fmt.Errorf("read the broker's clock: %w", err)
		}
		ts := s.CachedInfo().TimeStamp
		if ts.IsZero() {
			return 0, errors.New("read the broker's clock: the broker's stream info has no time stamp (nats-server 2.10 or later needed)")
		}
		rtt := t1.Sub(t0)
		if best >= 0 && rtt >= best {
			continue
		}
		best = rtt
		c.offset, c.latency = ts.Sub(t0.Add(rtt/2)), rtt/2
	}
	c.measured = true
	return c.offset, nil
}

// BrokerTime returns the broker's clock now, as the producer reckons it
// (see WithDelay).
func (p *Producer) BrokerTime(ctx context.Context) (time.Time, error) {
	off, err := p.brokerOffset(ctx)
	if err != nil {
		return time.Time{}, err
	}
	return p.clock.read().Add(off), nil
}

// scheduled reports whether t is a delayed task.
func scheduled(t *forq.Task) bool { return t.Delay != 0 || !t.At.IsZero() }

// schedule turns the task message m into the schedule of delayed task t:
// it resolves t.Delay into t.At on the broker's clock and moves m to the
// task's schedule subject, targeting the queue's subject.
func (p *Producer) schedule(ctx context.Context, t *forq.Task, m *nats.Msg) error {
	// An older broker would store the schedule as a plain message that
	// never fires: say so before anything is stored.
	if err := topology.Require(ctx, p.nc, p.tasks, topology.Delayed); err != nil {
		return fmt.Errorf("enqueue %s: %w", t.ID, err)
	}
	if t.Delay > 0 {
		off, err := p.brokerOffset(ctx)
		if err != nil {
			return fmt.Errorf("enqueue %s: %w", t.ID, err)
		}
		t.At, t.Delay = p.clock.read().Add(off+p.clock.latency).Add(t.Delay), 0
		// The time it is due is known now: check it against the deadline.
		if err := t.Validate(); err != nil {
			return err
		}
	}
	t.At = t.At.UTC().Round(0)
	wire.Schedule(m, t)
	return nil
}

// unschedule removes the schedule of delayed task id, in whatever queue, so
// that it never fires. It looks the schedule up and deletes that one
// message, rather than purging the stream with a filter: a producer's
// credentials (see broker.RolePermissions) may delete a message of
// forq.StreamTasks, as it may cancel a task, but not purge the stream.
func (p *Producer) unschedule(ctx context.Context, id string) error {
	if strings.ContainsAny(id, ".*> \t\r\n") {
		return nil // not a task ID that can have a schedule; no wildcard look-ups
	}
	s, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return err
	}
	// One schedule per subject (a new one rolls the last up); the loop
	// covers the same ID scheduled in two queues.
	for range 16 {
		m, err := s.GetLastMsgForSubject(ctx, wire.ScheduleFilter(id))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		// A schedule that has just fired is gone already: so much the better.
		if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			return err
		}
	}
	return fmt.Errorf("schedules of task %s keep coming back", id)
}
