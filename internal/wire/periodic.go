package wire

import (
	"strconv"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Periodic is the definition message of periodic task name: the broker
// publishes a task from it (t's payload, type, max attempts, timeout,
// record and priority) to t's queue at every tick of spec ("@every 5m0s"
// or a cron expression), in time zone tz ("" for UTC). It has no
// Nats-Msg-Id: every tick is a new task (the broker would drop it from
// the ticks anyway), and re-adding a schedule is not a duplicate. Unlike
// Encode, it always writes Forq-Max-Attempts.
func Periodic(name, spec, tz string, t *forq.Task) *nats.Msg {
	m := nats.NewMsg(PeriodicSubject(name))
	m.Data = t.Payload
	m.Header.Set(hdrType, t.Type)
	m.Header.Set(hdrMaxAttempts, strconv.Itoa(t.MaxAttempts))
	if t.Timeout > 0 {
		m.Header.Set(hdrTimeout, t.Timeout.String())
	}
	if t.Record {
		m.Header.Set(hdrRecord, "1")
	}
	if t.Priority != forq.PriorityNormal {
		m.Header.Set(hdrPriority, t.Priority.String())
	}
	m.Header.Set(jetstream.ScheduleHeader, spec)
	m.Header.Set(jetstream.ScheduleTargetHeader, LevelSubject(t.Queue, t.Priority))
	if tz != "" {
		m.Header.Set(jetstream.ScheduleTimeZoneHeader, tz)
	}
	return m
}

// DecodePeriodic reads back a definition that Periodic made, from its
// headers h and payload: its spec, time zone and task. It never fails: a
// definition anyone may have published reads as what its headers say,
// with zero values for what they do not (a malformed number or duration
// reads as 0, a target that is no task subject as no queue).
func DecodePeriodic(h nats.Header, payload []byte) (spec, tz string, t forq.Task) {
	q, prio, _ := ParseTaskSubject(h.Get(jetstream.ScheduleTargetHeader))
	t = forq.Task{Queue: q, Type: h.Get(hdrType), Payload: payload, Record: Record(h), Priority: prio}
	t.MaxAttempts, _ = strconv.Atoi(h.Get(hdrMaxAttempts))
	t.Timeout, _ = time.ParseDuration(h.Get(hdrTimeout))
	return h.Get(jetstream.ScheduleHeader), h.Get(jetstream.ScheduleTimeZoneHeader), t
}
