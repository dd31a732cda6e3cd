package producer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/forqhq/forq"
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
// A delayed task's schedule is on forq.ScheduleSubject(queue, id), fires
// once ("@at <RFC 3339 time>") and is removed by the broker when it fires;
// the task keeps its ID in forq.HeaderTaskID. A periodic task's definition
// is on forq.PeriodicSubject(name) ("@every 5m0s" or a cron expression);
// each tick is a new task whose ID is "seq-<stream sequence>".

// WithDelay makes the task a delayed one: the broker queues it d after the
// enqueue (d > 0), measured by the broker's clock, not the producer's.
func WithDelay(d time.Duration) Option {
	return func(t *forq.Task) error {
		if d <= 0 {
			return fmt.Errorf("%w: delay %s is not positive", forq.ErrInvalidOption, d)
		}
		if !t.At.IsZero() {
			return fmt.Errorf("%w: a delay and a time (WithAt) cannot go together", forq.ErrInvalidOption)
		}
		t.Delay = d
		return nil
	}
}

// WithAt makes the task a delayed one: the broker queues it at t, by the
// broker's clock. A time already past queues it at once.
func WithAt(at time.Time) Option {
	return func(t *forq.Task) error {
		if at.IsZero() {
			return fmt.Errorf("%w: zero time", forq.ErrInvalidOption)
		}
		if t.Delay != 0 {
			return fmt.Errorf("%w: a time and a delay (WithDelay) cannot go together", forq.ErrInvalidOption)
		}
		t.At = at
		return nil
	}
}

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
	if t.Delay < 0 {
		return fmt.Errorf("%w: delay %s is negative", forq.ErrInvalidTask, t.Delay)
	}
	if t.Delay > 0 && !t.At.IsZero() {
		return fmt.Errorf("%w: a task has a delay or a time (At), not both", forq.ErrInvalidTask)
	}
	if t.Delay > 0 {
		off, err := p.brokerOffset(ctx)
		if err != nil {
			return fmt.Errorf("enqueue %s: %w", t.ID, err)
		}
		t.At, t.Delay = p.clock.read().Add(off+p.clock.latency).Add(t.Delay), 0
	}
	t.At = t.At.UTC().Round(0)
	if !t.Deadline.IsZero() {
		if !t.Deadline.After(t.At) {
			return fmt.Errorf("%w: deadline %s is not after the time the task is due, %s", forq.ErrInvalidTask,
				t.Deadline.UTC().Format(time.RFC3339Nano), t.At.Format(time.RFC3339Nano))
		}
		// The schedule expires at the deadline (Nats-TTL); the task it
		// fires gets what is left of it.
		left := int64(math.Ceil(t.Deadline.Sub(t.At).Seconds()))
		m.Header.Set(jetstream.ScheduleTTLHeader, strconv.FormatInt(max(1, left), 10)+"s")
	}
	target := m.Subject
	m.Subject = forq.ScheduleSubject(t.Queue, t.ID)
	m.Header.Set(forq.HeaderTaskID, t.ID)
	// Nanoseconds: the broker parses them, and a time cut to the second
	// would fire up to a second early.
	m.Header.Set(jetstream.ScheduleHeader, "@at "+t.At.Format(time.RFC3339Nano))
	m.Header.Set(jetstream.ScheduleTargetHeader, target)
	return nil
}

// unschedule removes the schedule of delayed task id, in whatever queue, so
// that it never fires.
func (p *Producer) unschedule(ctx context.Context, id string) error {
	if strings.ContainsAny(id, ".*> \t\r\n") {
		return nil // not a task ID that can have a schedule; no wildcard purges
	}
	s, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return err
	}
	return s.Purge(ctx, jetstream.WithPurgeSubject(forq.SubjectSchedulePrefix+"*."+id))
}

// ErrScheduleExists is returned by AddSchedule when a periodic task of that
// name exists and replace is false.
var ErrScheduleExists = errors.New("schedule exists")

// ErrScheduleNotFound is returned for a periodic task name that has no
// definition.
var ErrScheduleNotFound = errors.New("no such schedule")

// Schedule is a periodic task: the broker enqueues a new task from it at
// every tick (Every or Cron), so it runs once per tick however many
// producers and workers are up, and survives their restarts and the
// broker's. Each task it enqueues has its own ID, "seq-<stream sequence>".
type Schedule struct {
	// Name identifies the schedule: letters, digits, '-' and '_', like a
	// queue name.
	Name string `json:"name"`
	// Every is the interval between ticks, whole seconds, at least 1s.
	Every time.Duration `json:"every,omitempty"`
	// Cron is a cron expression: 5 fields (minute hour day-of-month month
	// day-of-week), 6 with seconds first, or @hourly, @daily, @weekly,
	// @monthly, @yearly. Exactly one of Every and Cron is set.
	Cron string `json:"cron,omitempty"`
	// TimeZone of Cron, an IANA name like Europe/Paris; empty means UTC.
	TimeZone string `json:"time_zone,omitempty"`
	// Task is what each tick enqueues: Queue, Type, Payload, MaxAttempts,
	// Timeout and Record count; an ID, At, Delay or Deadline is an error.
	Task forq.Task `json:"task"`
	// Created is when the schedule was stored, by the broker's clock; set
	// by Schedules.
	Created time.Time `json:"created,omitzero"`
}

// Spec returns the schedule as the broker's Nats-Schedule header says it:
// "@every 5m0s", or the cron expression with its seconds field.
func (s *Schedule) Spec() string {
	if s.Every > 0 {
		return "@every " + s.Every.String()
	}
	return s.Cron
}

// Validate checks the schedule and normalizes it (5-field cron, task
// defaults). Errors wrap forq.ErrInvalidOption, forq.ErrInvalidQueue or
// forq.ErrInvalidTask.
func (s *Schedule) Validate() error {
	if err := forq.ValidateQueue(s.Name); err != nil {
		return fmt.Errorf("schedule name: %w", err)
	}
	switch {
	case s.Every != 0 && s.Cron != "":
		return fmt.Errorf("%w: schedule %s has both an interval and a cron expression; give one", forq.ErrInvalidOption, s.Name)
	case s.Every == 0 && s.Cron == "":
		return fmt.Errorf("%w: schedule %s needs an interval (every) or a cron expression", forq.ErrInvalidOption, s.Name)
	case s.Every != 0:
		if s.Every < time.Second || s.Every%time.Second != 0 {
			return fmt.Errorf("%w: interval %s: the broker ticks in whole seconds, at least 1s", forq.ErrInvalidOption, s.Every)
		}
		if s.TimeZone != "" {
			return fmt.Errorf("%w: a time zone goes with a cron expression, not an interval", forq.ErrInvalidOption)
		}
	default:
		c, err := normalizeCron(s.Cron)
		if err != nil {
			return fmt.Errorf("%w: cron %q: %v", forq.ErrInvalidOption, s.Cron, err)
		}
		s.Cron = c
		if s.TimeZone != "" {
			if _, err := time.LoadLocation(s.TimeZone); err != nil || s.TimeZone == "Local" {
				return fmt.Errorf("%w: time zone %q is not an IANA time zone name like Europe/Paris", forq.ErrInvalidOption, s.TimeZone)
			}
		}
	}
	t := &s.Task
	if t.ID != "" || scheduled(t) || !t.Deadline.IsZero() {
		return fmt.Errorf("%w: a periodic task cannot have an ID, a delay, a time or a deadline", forq.ErrInvalidTask)
	}
	if err := t.Validate(); err != nil {
		return err
	}
	t.ID = "" // each tick is a task of its own
	return nil
}

// AddSchedule stores periodic task s in the broker. With replace false, an
// existing schedule of that name is an error wrapping ErrScheduleExists;
// with replace true it is replaced. Errors wrap forq.ErrInvalidOption,
// forq.ErrInvalidQueue or forq.ErrInvalidTask for a bad schedule.
func (p *Producer) AddSchedule(ctx context.Context, s Schedule, replace bool) error {
	if err := s.Validate(); err != nil {
		return err
	}
	t := s.Task
	m := nats.NewMsg(forq.PeriodicSubject(s.Name))
	m.Data = t.Payload
	// No Nats-Msg-Id: every tick is a new task (the broker would drop it
	// from the ticks anyway), and re-adding a schedule is not a duplicate.
	m.Header.Set(forq.HeaderType, t.Type)
	m.Header.Set(forq.HeaderMaxAttempts, strconv.Itoa(t.MaxAttempts))
	if t.Timeout > 0 {
		m.Header.Set(forq.HeaderTimeout, t.Timeout.String())
	}
	if t.Record {
		m.Header.Set(forq.HeaderRecord, "1")
	}
	if t.Priority != forq.PriorityNormal {
		m.Header.Set(forq.HeaderPriority, t.Priority.String())
	}
	m.Header.Set(jetstream.ScheduleHeader, s.Spec())
	m.Header.Set(jetstream.ScheduleTargetHeader, forq.LevelSubject(t.Queue, t.Priority))
	if s.TimeZone != "" {
		m.Header.Set(jetstream.ScheduleTimeZoneHeader, s.TimeZone)
	}
	if max := p.nc.MaxPayload(); max > 0 {
		if size := int64(len(m.Data)) + headerSize(m.Header) + int64(len(m.Subject)); size > max {
			return fmt.Errorf("%w: schedule %s is %d bytes with its headers; the broker accepts at most %d", forq.ErrPayloadTooLarge, s.Name, size, max)
		}
	}
	var opts []jetstream.PublishOpt
	if !replace {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	if _, err := p.js.PublishMsg(ctx, m, opts...); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			switch apiErr.ErrorCode {
			case jetstream.JSErrCodeStreamWrongLastSequence:
				return fmt.Errorf("schedule %s: %w", s.Name, ErrScheduleExists)
			case jetstream.JSErrCodeSchedulePatternInvalid:
				return fmt.Errorf("%w: schedule %s: the broker rejects %q: %v", forq.ErrInvalidOption, s.Name, s.Spec(), err)
			case jetstream.JSErrCodeMessageSchedulesDisabled:
				return fmt.Errorf("schedule %s: stream %s does not allow message schedules (a forq process of this version adds it on start): %w", s.Name, forq.StreamTasks, err)
			}
		}
		return fmt.Errorf("schedule %s: %w", s.Name, err)
	}
	return nil
}

// Schedules returns the periodic tasks stored in the broker, sorted by name.
func (p *Producer) Schedules(ctx context.Context) ([]Schedule, error) {
	st, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return nil, fmt.Errorf("schedules: %w", err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectPeriodicPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("schedules: %w", err)
	}
	names := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		names = append(names, strings.TrimPrefix(subj, forq.SubjectPeriodicPrefix))
	}
	slices.Sort(names)
	out := make([]Schedule, 0, len(names))
	for _, name := range names {
		m, err := st.GetLastMsgForSubject(ctx, forq.PeriodicSubject(name))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("schedule %s: %w", name, err)
		}
		out = append(out, decodeSchedule(name, m))
	}
	return out, nil
}

// Schedule returns periodic task name; the error wraps ErrScheduleNotFound
// if there is none.
func (p *Producer) Schedule(ctx context.Context, name string) (*Schedule, error) {
	if err := forq.ValidateQueue(name); err != nil {
		return nil, fmt.Errorf("schedule name: %w", err)
	}
	st, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", name, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, forq.PeriodicSubject(name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("schedule %s: %w", name, ErrScheduleNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", name, err)
	}
	s := decodeSchedule(name, m)
	return &s, nil
}

// RemoveSchedule deletes periodic task name: it ticks no more. Tasks it
// already enqueued stay queued. The error wraps ErrScheduleNotFound if
// there is no such schedule.
func (p *Producer) RemoveSchedule(ctx context.Context, name string) error {
	if _, err := p.Schedule(ctx, name); err != nil {
		return err
	}
	st, err := p.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return fmt.Errorf("schedule %s: %w", name, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(forq.PeriodicSubject(name))); err != nil {
		return fmt.Errorf("remove schedule %s: %w", name, err)
	}
	return nil
}

func decodeSchedule(name string, m *jetstream.RawStreamMsg) Schedule {
	h := m.Header
	s := Schedule{Name: name, TimeZone: h.Get(jetstream.ScheduleTimeZoneHeader), Created: m.Time}
	spec := h.Get(jetstream.ScheduleHeader)
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		s.Every, _ = time.ParseDuration(d)
	} else {
		s.Cron = spec
	}
	q, prio, _ := forq.ParseTaskSubject(h.Get(jetstream.ScheduleTargetHeader))
	s.Task = forq.Task{Queue: q, Type: h.Get(forq.HeaderType), Payload: m.Data, Record: h.Get(forq.HeaderRecord) == "1", Priority: prio}
	s.Task.MaxAttempts, _ = strconv.Atoi(h.Get(forq.HeaderMaxAttempts))
	s.Task.Timeout, _ = time.ParseDuration(h.Get(forq.HeaderTimeout))
	return s
}

// cron fields as the broker reads them (robfig/cron's grammar): each field
// is a comma-separated list of *, ?, N, N-M, with an optional /step; month
// and day-of-week also take names (jan, mon).
var cronFields = []struct {
	name     string
	min, max int
	names    []string // names[i] is min+i
}{
	{name: "second", max: 59},
	{name: "minute", max: 59},
	{name: "hour", max: 23},
	{name: "day-of-month", min: 1, max: 31},
	{name: "month", min: 1, max: 12, names: []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}},
	{name: "day-of-week", max: 6, names: []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}},
}

var cronMacros = map[string]bool{"@yearly": true, "@annually": true, "@monthly": true, "@weekly": true, "@daily": true, "@midnight": true, "@hourly": true}

// normalizeCron checks a cron expression and returns it with 6 fields (a
// 5-field one gets "0" seconds), or the macro as it is.
func normalizeCron(expr string) (string, error) {
	expr = strings.TrimSpace(expr)
	if strings.HasPrefix(expr, "@") {
		if cronMacros[expr] {
			return expr, nil
		}
		return "", errors.New("unknown macro; use @hourly, @daily, @weekly, @monthly or @yearly (or --every for an interval)")
	}
	f := strings.Fields(expr)
	switch len(f) {
	case 5:
		f = append([]string{"0"}, f...)
	case 6:
	default:
		return "", fmt.Errorf("%d fields; want 5 (minute hour day-of-month month day-of-week) or 6 (second first)", len(f))
	}
	for i, field := range f {
		if err := checkCronField(field, i); err != nil {
			return "", fmt.Errorf("%s field %q: %v", cronFields[i].name, field, err)
		}
	}
	return strings.Join(f, " "), nil
}

func checkCronField(field string, i int) error {
	cf := cronFields[i]
	num := func(s string) (int, error) {
		for j, n := range cf.names {
			if strings.EqualFold(s, n) {
				return cf.min + j, nil
			}
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a number", s)
		}
		if n < cf.min || n > cf.max {
			return 0, fmt.Errorf("%d is out of range %d-%d", n, cf.min, cf.max)
		}
		return n, nil
	}
	for r := range strings.SplitSeq(field, ",") {
		rng, step, hasStep := strings.Cut(r, "/")
		if hasStep {
			n, err := strconv.Atoi(step)
			if err != nil || n < 1 {
				return fmt.Errorf("step %q is not a positive number", step)
			}
		}
		if rng == "*" || rng == "?" {
			continue
		}
		lo, hi, isRange := strings.Cut(rng, "-")
		a, err := num(lo)
		if err != nil {
			return err
		}
		if isRange {
			b, err := num(hi)
			if err != nil {
				return err
			}
			if a > b {
				return fmt.Errorf("range %s runs backwards", rng)
			}
		}
	}
	return nil
}
