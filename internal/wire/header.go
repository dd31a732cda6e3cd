package wire

import (
	"cmp"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a task message. They are unexported on purpose: no other
// package writes or reads them by name.
const (
	// hdrID carries the task ID. It is JetStream's own de-duplication
	// header, so a second enqueue of one ID inside the stream's duplicate
	// window is dropped by the broker.
	hdrID = jetstream.MsgIDHeader
	// hdrTaskID carries the task ID where Nats-Msg-Id cannot: on a task
	// fired by a schedule (the broker drops Nats-Msg-Id then), on a dead
	// letter and on a task retried from the dead letters (whose
	// Nats-Msg-Id is a de-duplication key of their own). When present it
	// is the task's ID.
	hdrTaskID = "Forq-Id"
	// hdrType names the task type, which selects the handler.
	hdrType = "Forq-Type"
	// hdrMaxAttempts is the number of times the task may run, a decimal
	// integer; absent means forq.DefaultMaxAttempts. Encode leaves it out
	// when the task uses the default.
	hdrMaxAttempts = "Forq-Max-Attempts"
	// hdrTimeout bounds one attempt, as a Go duration ("30s", "1m30s");
	// absent means no timeout.
	hdrTimeout = "Forq-Timeout"
	// hdrRecord asks the worker to record the task's progress and result
	// in forq.BucketResults ("1"). Without it only failures are recorded.
	hdrRecord = "Forq-Record"
	// hdrDeadline is when a task expires if no worker has started it,
	// RFC 3339 with nanoseconds. Encode also sets the broker's per-message
	// TTL (Nats-TTL) so that the broker drops it then.
	hdrDeadline = "Forq-Deadline"
	// hdrPriority names a task's priority level ("high", "low") when it
	// is not normal. The subject decides the level; the header only says
	// it (and takes a dead-lettered task back to its level when retried).
	hdrPriority = "Forq-Priority"
	// hdrLock carries a task's lock key: tasks with the same lock key
	// never run at the same time.
	hdrLock = "Forq-Lock"
	// hdrUnique carries a task's unique key: while a task with it is
	// queued or running, enqueueing another task with the same key returns
	// the first task's ID and enqueues nothing.
	hdrUnique = "Forq-Unique"
)

// Msg is a task's message with room for the values of its usual headers,
// so that one Msg encodes task after task without allocating them:
// nats.Conn.PublishMsg has copied a message's bytes by the time it
// returns.
type Msg struct {
	nats.Msg
	vals [3]string
}

// NewMsg returns an empty Msg.
func NewMsg() *Msg { return &Msg{Msg: nats.Msg{Header: make(nats.Header, 4)}} }

// Encode writes valid task t (see forq.Task.Validate) into m as its
// message, replacing what m held: subject, headers and payload. A task
// with a deadline also gets the broker's per-message TTL, in whole
// seconds from now and at least one. A delayed task is then moved to its
// schedule by Schedule.
func (m *Msg) Encode(t *forq.Task) {
	clear(m.Header)
	m.Subject, m.Reply, m.Data = LevelSubject(t.Queue, t.Priority), "", t.Payload
	// The keys are canonical already, so they are set directly, with
	// values in m. Forq-Max-Attempts is left out at the default, which is
	// what its absence means: every header costs the broker on every
	// message (docs/bench.md).
	m.vals = [...]string{t.ID, t.Type, ""}
	m.Header[hdrID] = m.vals[0:1:1]
	m.Header[hdrType] = m.vals[1:2:2]
	if t.MaxAttempts != forq.DefaultMaxAttempts {
		m.vals[2] = strconv.Itoa(t.MaxAttempts)
		m.Header[hdrMaxAttempts] = m.vals[2:3:3]
	}
	if t.Timeout > 0 {
		m.Header.Set(hdrTimeout, t.Timeout.String())
	}
	if t.Record {
		m.Header.Set(hdrRecord, "1")
	}
	if t.Priority != forq.PriorityNormal {
		m.Header.Set(hdrPriority, t.Priority.String())
	}
	if t.LockKey != "" {
		m.Header.Set(hdrLock, t.LockKey)
	}
	if t.UniqueKey != "" {
		m.Header.Set(hdrUnique, t.UniqueKey)
	}
	if !t.Deadline.IsZero() {
		m.Header.Set(hdrDeadline, t.Deadline.UTC().Format(time.RFC3339Nano))
		m.Header.Set(jetstream.MsgTTLHeader, ttlSeconds(time.Until(t.Deadline)))
	}
}

// ttlSeconds is d as the broker's TTL headers take it: whole seconds,
// rounded up, at least one.
func ttlSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10) + "s"
}

// Schedule moves the message of delayed task t, encoded in m, to the
// task's schedule (see ScheduleSubject): the broker publishes it to the
// task's subject at t.At, which must be set, by the broker's clock, and
// then drops the schedule. The task keeps its ID in Forq-Id (the broker
// does not pass Nats-Msg-Id on). A task with a deadline, which must come
// after t.At, has its schedule expire then, and the task it fires gets
// what is left of it.
func Schedule(m *nats.Msg, t *forq.Task) {
	if !t.Deadline.IsZero() {
		m.Header.Set(jetstream.ScheduleTTLHeader, ttlSeconds(t.Deadline.Sub(t.At)))
	}
	target := m.Subject
	m.Subject = ScheduleSubject(t.Queue, t.ID)
	m.Header.Set(hdrTaskID, t.ID)
	// Nanoseconds: the broker parses them, and a time cut to the second
	// would fire up to a second early.
	m.Header.Set(jetstream.ScheduleHeader, "@at "+t.At.Format(time.RFC3339Nano))
	m.Header.Set(jetstream.ScheduleTargetHeader, target)
}

// Delivery is what a delivered task's headers and ack subject say about
// it, as Decode reads them.
type Delivery struct {
	// ID is Forq-Id, else Nats-Msg-Id, else "seq-<stream sequence>" for
	// a task published without an ID (e.g. by hand with nats pub).
	ID string
	// Type is Forq-Type; empty makes Err.
	Type string
	// Delivered is the broker's delivery count of this message, 1 on its
	// first delivery (and when the ack subject does not say).
	Delivered int
	// MaxAttempts is Forq-Max-Attempts, forq.DefaultMaxAttempts when
	// absent; at least 1 even when the header is malformed.
	MaxAttempts int
	// Timeout is Forq-Timeout, 0 when absent (no timeout).
	Timeout time.Duration
	// Record is true when Forq-Record is "1".
	Record bool
	// Deadline is Forq-Deadline, zero when absent or malformed (a task
	// whose deadline cannot be read does not expire).
	Deadline time.Time
	// Priority is Forq-Priority, normal when absent or malformed: it is
	// for information, the subject the task came on decides its level.
	Priority forq.Priority
	// Lock and Unique are the task's lock and unique keys, if any.
	Lock, Unique string
	// Err names the first malformed or missing header that makes the task
	// impossible to run as its producer meant: Forq-Type missing,
	// Forq-Max-Attempts or Forq-Timeout malformed, no ID. Such a task
	// should be dead-lettered at once, without running.
	Err error
}

// Decode reads a task's metadata from its headers h and its ack subject
// reply, as the broker delivered them. It is the one decoder of this
// outside input, so it never panics and reports a bad header in Err
// rather than guessing. It allocates nothing for a well-formed task with
// an ID.
func Decode(h nats.Header, reply string) (d Delivery) {
	d.Delivered = 1
	tok, isAck := ackTokens(reply)
	if n := parseNum(tok[4]); isAck && n > 0 && n <= math.MaxInt32 {
		d.Delivered = int(n)
	}
	var f fields
	f.scan(h)
	d.ID, d.Type, d.Lock, d.Unique = cmp.Or(f.taskID, f.msgID), f.typ, f.lock, f.unique
	if d.ID == "" && isAck {
		// Published without an ID: the stream sequence is stable across
		// redeliveries.
		d.ID = "seq-" + strconv.FormatUint(parseNum(tok[5]), 10)
	}
	d.MaxAttempts = forq.DefaultMaxAttempts
	if s := f.maxAttempts; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			d.Err = fmt.Errorf("header %s: %q is not a positive integer", hdrMaxAttempts, s)
			n = 1
		}
		d.MaxAttempts = n
	}
	if s := f.timeout; s != "" && d.Err == nil {
		t, err := time.ParseDuration(s)
		if err != nil || t <= 0 {
			d.Err = fmt.Errorf("header %s: %q is not a positive duration like 30s", hdrTimeout, s)
			t = 0
		}
		d.Timeout = t
	}
	if d.Type == "" && d.Err == nil {
		d.Err = fmt.Errorf("no %s header", hdrType)
	}
	if d.ID == "" && d.Err == nil {
		d.Err = fmt.Errorf("no %s header and no stream sequence to name the task by", hdrID)
	}
	d.Record = f.record == "1"
	d.Deadline, _ = parseDeadline(f.deadline)
	d.Priority = priority(f.priority)
	return d
}

// fields are the values of a task message's headers, "" for those it does
// not have.
type fields struct {
	msgID, taskID, typ, maxAttempts, timeout, record, deadline, priority, lock, unique string
}

// scan reads h's task headers into f. A task sent with the defaults has
// two headers, its ID and its type: those are looked up, and when they are
// all h has, that is all; otherwise one pass over h reads every header a
// task may have, rather than a lookup of each. (Ranging over a map starts
// at a random place, which costs more than two lookups in a small one.)
func (f *fields) scan(h nats.Header) {
	found := 0
	if vs := h[hdrID]; len(vs) != 0 {
		f.msgID = vs[0]
		found++
	}
	if vs := h[hdrType]; len(vs) != 0 {
		f.typ = vs[0]
		found++
	}
	if found == len(h) {
		return
	}
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		switch v := vs[0]; k {
		case hdrID:
			f.msgID = v
		case hdrTaskID:
			f.taskID = v
		case hdrType:
			f.typ = v
		case hdrMaxAttempts:
			f.maxAttempts = v
		case hdrTimeout:
			f.timeout = v
		case hdrRecord:
			f.record = v
		case hdrDeadline:
			f.deadline = v
		case hdrPriority:
			f.priority = v
		case hdrLock:
			f.lock = v
		case hdrUnique:
			f.unique = v
		}
	}
}

// TaskID returns the ID of the task whose headers are h: Forq-Id when
// present (a task fired by a schedule, or retried from the dead letters,
// whose Nats-Msg-Id is only a de-duplication key), else Nats-Msg-Id; ""
// when neither is set.
func TaskID(h nats.Header) string {
	if id := h.Get(hdrTaskID); id != "" {
		return id
	}
	return h.Get(hdrID)
}

// Record reports whether the task whose headers are h asks for a record
// of its state and result (Forq-Record: 1).
func Record(h nats.Header) bool { return h.Get(hdrRecord) == "1" }

// Deadline returns the deadline of the task whose headers are h, if it
// has a valid one.
func Deadline(h nats.Header) (time.Time, bool) { return parseDeadline(h.Get(hdrDeadline)) }

// parseDeadline reads a Forq-Deadline value; "" and a malformed one are
// no deadline.
func parseDeadline(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	dl, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false
	}
	return dl, true
}

// HasLock reports whether the task whose headers are h has a lock key.
func HasLock(h nats.Header) bool { return h.Get(hdrLock) != "" }

// UniqueKey returns the unique key of the task whose headers are h, ""
// for none.
func UniqueKey(h nats.Header) string { return h.Get(hdrUnique) }

// BadLock is the error for a task whose lock key cannot be a lock: why
// says what is wrong with it.
func BadLock(why error) error { return fmt.Errorf("header %s: %w", hdrLock, why) }

// priority reads a Forq-Priority value as forq.ParsePriority does, without
// allocating: "high" or "low" in any case, anything else is normal.
func priority(s string) forq.Priority {
	s = strings.TrimSpace(s)
	switch {
	case strings.EqualFold(s, "high"):
		return forq.PriorityHigh
	case strings.EqualFold(s, "low"):
		return forq.PriorityLow
	}
	return forq.PriorityNormal
}
