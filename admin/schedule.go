package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Periodic tasks are JetStream message schedules (ADR-51): a periodic
// task's definition is a message on wire.PeriodicSubject(name) in
// forq.StreamTasks whose Nats-Schedule header says when ("@every 5m0s" or
// a cron expression) and whose Nats-Schedule-Target says where, the
// task's queue; at each tick the broker publishes its body and headers
// (less the Nats-Schedule* ones) to the target, a new task whose ID is
// "seq-<stream sequence>". Nothing but the broker keeps time, so
// schedules survive restarts of every process and fire once however many
// processes run.

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
	if t.ID != "" || t.Delay != 0 || !t.At.IsZero() || !t.Deadline.IsZero() {
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
// forq.ErrInvalidQueue or forq.ErrInvalidTask for a bad schedule, and
// forq.ErrServerTooOld on a NATS server older than 2.14 (which stores a
// schedule but never fires it).
func (in *Inspector) AddSchedule(ctx context.Context, s Schedule, replace bool) error {
	if err := s.Validate(); err != nil {
		return err
	}
	m := scheduleMsg(s)
	if limit := in.nc.MaxPayload(); limit > 0 {
		if size := int64(len(m.Data)) + headerSize(m.Header) + int64(len(m.Subject)); size > limit {
			return fmt.Errorf("%w: schedule %s is %d bytes with its headers; the broker accepts at most %d", forq.ErrPayloadTooLarge, s.Name, size, limit)
		}
	}
	var opts []jetstream.PublishOpt
	if !replace {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	h, err := in.declare(ctx)
	if err != nil {
		return fmt.Errorf("schedule %s: %w", s.Name, err)
	}
	// An older broker would store the definition and never fire it.
	if err := topology.Require(ctx, in.nc, h.Tasks, topology.Periodic); err != nil {
		return fmt.Errorf("schedule %s: %w", s.Name, err)
	}
	if _, err := in.js.PublishMsg(ctx, m, opts...); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			switch apiErr.ErrorCode {
			case jetstream.JSErrCodeStreamWrongLastSequence:
				return fmt.Errorf("schedule %s: %w", s.Name, ErrScheduleExists)
			case jetstream.JSErrCodeSchedulePatternInvalid:
				// Validate catches what forq knows of; the broker also
				// refuses a pattern with no time in the next five years.
				return fmt.Errorf("%w: schedule %s: the broker refuses %q: it finds no time it fires within five years", forq.ErrInvalidOption, s.Name, s.Spec())
			case jetstream.JSErrCodeMessageSchedulesDisabled:
				return fmt.Errorf("schedule %s: stream %s does not allow message schedules (a forq process of this version adds it on start): %w", s.Name, forq.StreamTasks, err)
			}
		}
		return fmt.Errorf("schedule %s: %w", s.Name, err)
	}
	return nil
}

// scheduleMsg is the definition message of valid schedule s, as
// AddSchedule stores it and decodeSchedule reads it back.
func scheduleMsg(s Schedule) *nats.Msg { return wire.Periodic(s.Name, s.Spec(), s.TimeZone, &s.Task) }

// Schedules returns the periodic tasks stored in the broker, sorted by name.
func (in *Inspector) Schedules(ctx context.Context) ([]Schedule, error) {
	st, err := in.stream(ctx, forq.StreamTasks)
	if err != nil || st == nil {
		return []Schedule{}, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectPeriodicPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("schedules: %w", err)
	}
	names := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		names = append(names, wire.PeriodicName(subj))
	}
	slices.Sort(names)
	out := make([]Schedule, 0, len(names))
	for _, name := range names {
		m, err := st.GetLastMsgForSubject(ctx, wire.PeriodicSubject(name))
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
func (in *Inspector) Schedule(ctx context.Context, name string) (*Schedule, error) {
	if err := forq.ValidateQueue(name); err != nil {
		return nil, fmt.Errorf("schedule name: %w", err)
	}
	st, err := in.stream(ctx, forq.StreamTasks)
	if err != nil {
		return nil, fmt.Errorf("schedule %s: %w", name, err)
	}
	if st == nil {
		return nil, fmt.Errorf("schedule %s: %w", name, ErrScheduleNotFound)
	}
	m, err := st.GetLastMsgForSubject(ctx, wire.PeriodicSubject(name))
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
func (in *Inspector) RemoveSchedule(ctx context.Context, name string) error {
	if _, err := in.Schedule(ctx, name); err != nil {
		return err
	}
	st, err := in.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return fmt.Errorf("schedule %s: %w", name, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(wire.PeriodicSubject(name))); err != nil {
		return fmt.Errorf("remove schedule %s: %w", name, err)
	}
	return nil
}

func decodeSchedule(name string, m *jetstream.RawStreamMsg) Schedule {
	spec, tz, t := wire.DecodePeriodic(m.Header, m.Data)
	s := Schedule{Name: name, TimeZone: tz, Created: m.Time, Task: t}
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		s.Every, _ = time.ParseDuration(d)
	} else {
		s.Cron = spec
	}
	return s
}
