package wire

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const ackSubj = "$JS.ACK.FORQ_TASKS.default.3.42.17.1700000000000000000.0"

func hdr(kv ...string) nats.Header {
	h := nats.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// TestRoundTrip: a task encoded by Msg.Encode and delivered decodes, with
// Decode and the subject, to every field it was encoded from; with each
// option and without.
func TestRoundTrip(t *testing.T) {
	deadline := time.Date(2099, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	base := forq.Task{ID: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Queue: "default", Type: "email", Payload: []byte(`{"to":"a@b"}`), MaxAttempts: forq.DefaultMaxAttempts}
	for _, tc := range []struct {
		name string
		edit func(*forq.Task)
	}{
		{"defaults", func(*forq.Task) {}},
		{"no payload", func(t *forq.Task) { t.Payload = nil }},
		{"other queue", func(t *forq.Task) { t.Queue = "reports-2_b" }},
		{"max attempts", func(t *forq.Task) { t.MaxAttempts = 7 }},
		{"one attempt", func(t *forq.Task) { t.MaxAttempts = 1 }},
		{"timeout", func(t *forq.Task) { t.Timeout = 90 * time.Second }},
		{"sub-second timeout", func(t *forq.Task) { t.Timeout = 1500 * time.Microsecond }},
		{"record", func(t *forq.Task) { t.Record = true }},
		{"deadline", func(t *forq.Task) { t.Deadline = deadline }},
		{"high", func(t *forq.Task) { t.Priority = forq.PriorityHigh }},
		{"low", func(t *forq.Task) { t.Priority = forq.PriorityLow }},
		{"lock", func(t *forq.Task) { t.LockKey = "user 42/ünïcode" }},
		{"unique", func(t *forq.Task) { t.UniqueKey = "report/2026.05" }},
		{"everything", func(t *forq.Task) {
			t.Queue, t.MaxAttempts, t.Timeout, t.Record, t.Deadline = "q", 9, time.Minute, true, deadline
			t.Priority, t.LockKey, t.UniqueKey = forq.PriorityLow, "l", "u"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			task := base
			tc.edit(&task)
			if err := task.Validate(); err != nil {
				t.Fatalf("test task: %v", err)
			}
			m := NewMsg()
			m.Encode(&forq.Task{ID: "stale", Type: "stale", Timeout: time.Hour, Record: true, LockKey: "stale", Deadline: deadline})
			m.Encode(&task) // over a stale task: nothing of it may stay
			queue, prio, ok := ParseTaskSubject(m.Subject)
			if !ok || queue != task.Queue || prio != task.Priority {
				t.Errorf("subject %q: got queue %q, priority %s, ok %v; want %q, %s", m.Subject, queue, prio, ok, task.Queue, task.Priority)
			}
			if !bytes.Equal(m.Data, task.Payload) || m.Reply != "" {
				t.Errorf("got payload %q reply %q, want %q and none", m.Data, m.Reply, task.Payload)
			}
			if _, ttl := m.Header[jetstream.MsgTTLHeader]; ttl != !task.Deadline.IsZero() {
				t.Errorf("got %s header %v, want it with a deadline only", jetstream.MsgTTLHeader, ttl)
			}
			got := Decode(m.Header, ackSubj)
			want := Delivery{ID: task.ID, Type: task.Type, Delivered: 3, MaxAttempts: task.MaxAttempts, Timeout: task.Timeout,
				Record: task.Record, Priority: task.Priority, Lock: task.LockKey, Unique: task.UniqueKey}
			if !got.Deadline.Equal(task.Deadline) {
				t.Errorf("got deadline %v, want %v", got.Deadline, task.Deadline)
			}
			got.Deadline = time.Time{}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

// TestScheduleRoundTrip: a delayed task's schedule, fired as the broker
// fires it (its headers less Nats-Msg-Id and the schedule's, on the
// target subject), decodes to the task, its ID from Forq-Id.
func TestScheduleRoundTrip(t *testing.T) {
	at := time.Date(2099, 1, 1, 0, 0, 0, 1, time.UTC)
	task := forq.Task{ID: "id-1", Queue: "q", Type: "x", MaxAttempts: 5, Priority: forq.PriorityHigh, At: at, Deadline: at.Add(90 * time.Second)}
	m := NewMsg()
	m.Encode(&task)
	Schedule(&m.Msg, &task)
	if m.Subject != ScheduleSubject("q", "id-1") || m.Header.Get(jetstream.ScheduleHeader) != "@at 2099-01-01T00:00:00.000000001Z" ||
		m.Header.Get(jetstream.ScheduleTTLHeader) != "90s" {
		t.Fatalf("schedule %s %v", m.Subject, m.Header)
	}
	fired := nats.Header{}
	for k, vs := range m.Header {
		if k != jetstream.MsgIDHeader && !strings.HasPrefix(k, "Nats-Schedule") {
			fired[k] = vs
		}
	}
	target := m.Header.Get(jetstream.ScheduleTargetHeader)
	if q, p, ok := ParseTaskSubject(target); !ok || q != "q" || p != forq.PriorityHigh {
		t.Fatalf("target %q: got %q %s %v", target, q, p, ok)
	}
	got := Decode(fired, ackSubj)
	if got.Err != nil || got.ID != "id-1" || got.MaxAttempts != 5 || !got.Deadline.Equal(task.Deadline) {
		t.Errorf("fired task decodes to %+v", got)
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       nats.Header
		reply   string
		want    Delivery
		wantErr string // a part of the error; "" for none
	}{
		{name: "plain task", h: hdr(hdrID, "id-1", hdrType, "email"), reply: ackSubj,
			want: Delivery{ID: "id-1", Type: "email", Delivered: 3, MaxAttempts: forq.DefaultMaxAttempts}},
		{name: "Forq-Id wins over Nats-Msg-Id", h: hdr(hdrID, "dedupe-key", hdrTaskID, "task-7", hdrType, "x"), reply: ackSubj,
			want: Delivery{ID: "task-7", Type: "x", Delivered: 3, MaxAttempts: 3}},
		{name: "no ID: named by stream sequence", h: hdr(hdrType, "x"), reply: ackSubj,
			want: Delivery{ID: "seq-42", Type: "x", Delivered: 3, MaxAttempts: 3}},
		{name: "domain ack subject", h: hdr(hdrType, "x"), reply: "$JS.ACK.hub.ACCHASH.FORQ_TASKS.default.5.9.9.1700000000000000000.0.tok",
			want: Delivery{ID: "seq-9", Type: "x", Delivered: 5, MaxAttempts: 3}},
		{name: "max attempts and timeout", h: hdr(hdrID, "a", hdrType, "x", hdrMaxAttempts, "7", hdrTimeout, "1m30s"), reply: ackSubj,
			want: Delivery{ID: "a", Type: "x", Delivered: 3, MaxAttempts: 7, Timeout: 90 * time.Second}},
		{name: "no ack subject: first delivery", h: hdr(hdrID, "a", hdrType, "x"), reply: "",
			want: Delivery{ID: "a", Type: "x", Delivered: 1, MaxAttempts: 3}},
		{name: "delivery count too large for an int32 is ignored", h: hdr(hdrID, "a", hdrType, "x"), reply: "$JS.ACK.S.c.99999999999999999999.1.1.1.0",
			want: Delivery{ID: "a", Type: "x", Delivered: 1, MaxAttempts: 3}},
		{name: "record only when 1", h: hdr(hdrID, "a", hdrType, "x", hdrRecord, "yes"), reply: ackSubj,
			want: Delivery{ID: "a", Type: "x", Delivered: 3, MaxAttempts: 3}},
		{name: "malformed deadline: none", h: hdr(hdrID, "a", hdrType, "x", hdrDeadline, "tomorrow"), reply: ackSubj,
			want: Delivery{ID: "a", Type: "x", Delivered: 3, MaxAttempts: 3}},
		{name: "priority in any case", h: hdr(hdrID, "a", hdrType, "x", hdrPriority, " HIGH "), reply: ackSubj,
			want: Delivery{ID: "a", Type: "x", Delivered: 3, MaxAttempts: 3, Priority: forq.PriorityHigh}},
		{name: "unknown priority: normal", h: hdr(hdrID, "a", hdrType, "x", hdrPriority, "urgent"), reply: ackSubj,
			want: Delivery{ID: "a", Type: "x", Delivered: 3, MaxAttempts: 3}},
		{name: "no type", h: hdr(hdrID, "a"), reply: ackSubj, wantErr: "no Forq-Type header"},
		{name: "max attempts zero", h: hdr(hdrID, "a", hdrType, "x", hdrMaxAttempts, "0"), reply: ackSubj,
			wantErr: `Forq-Max-Attempts: "0" is not a positive integer`},
		{name: "max attempts not a number", h: hdr(hdrID, "a", hdrType, "x", hdrMaxAttempts, "three"), reply: ackSubj,
			wantErr: `"three" is not a positive integer`},
		{name: "max attempts overflow", h: hdr(hdrID, "a", hdrType, "x", hdrMaxAttempts, "99999999999999999999"), reply: ackSubj,
			wantErr: "is not a positive integer"},
		{name: "negative timeout", h: hdr(hdrID, "a", hdrType, "x", hdrTimeout, "-5s"), reply: ackSubj,
			wantErr: `Forq-Timeout: "-5s" is not a positive duration`},
		{name: "timeout without unit", h: hdr(hdrID, "a", hdrType, "x", hdrTimeout, "30"), reply: ackSubj,
			wantErr: `"30" is not a positive duration`},
		{name: "no ID and no ack subject", h: hdr(hdrType, "x"), reply: "_INBOX.x", wantErr: "no Nats-Msg-Id header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Decode(tc.h, tc.reply)
			if tc.wantErr != "" {
				if got.Err == nil || !strings.Contains(got.Err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", got.Err, tc.wantErr)
				}
				if got.MaxAttempts < 1 || got.Delivered < 1 {
					t.Errorf("got MaxAttempts %d Delivered %d with an error, want both at least 1", got.MaxAttempts, got.Delivered)
				}
				return
			}
			if got.Err != nil {
				t.Fatalf("got error %v, want none", got.Err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDecodeAllocs: a well-formed task with an ID decodes without
// allocating (the hot path).
func TestDecodeAllocs(t *testing.T) {
	for _, h := range []nats.Header{
		hdr(hdrID, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", hdrType, "email", hdrTimeout, "30s", hdrMaxAttempts, "5"),
		hdr(hdrID, "a", hdrType, "x", hdrRecord, "1", hdrPriority, "High", hdrLock, "l", hdrUnique, "u", hdrDeadline, "2099-01-01T00:00:00.5Z"),
	} {
		if n := testing.AllocsPerRun(100, func() { _ = Decode(h, ackSubj) }); n != 0 {
			t.Errorf("%v: got %.0f allocations per decode, want 0", h, n)
		}
	}
}

func TestParseAck(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  Ack
		ok    bool
	}{
		{ackSubj, Ack{Stream: "FORQ_TASKS", Consumer: "default", Delivered: 3, Seq: 42, ConsumerSeq: 17, Timestamp: 1700000000000000000}, true},
		{"$JS.ACK.hub.ACCHASH.S.c.5.9.8.7.6.tok", Ack{Domain: "hub", Stream: "S", Consumer: "c", Delivered: 5, Seq: 9, ConsumerSeq: 8, Timestamp: 7, Pending: 6}, true},
		{"$JS.ACK._.ACCHASH.S.c.5.9.8.7.6", Ack{Stream: "S", Consumer: "c", Delivered: 5, Seq: 9, ConsumerSeq: 8, Timestamp: 7, Pending: 6}, true},
		{"$JS.ACK.S.c.x.-1.1.1.0", Ack{Stream: "S", Consumer: "c", ConsumerSeq: 1, Timestamp: 1}, true},
		{"$JS.ACK.S.c.1.2", Ack{}, false},
		{"$JS.ACK.a.b.c.d.e.f.g.h", Ack{}, false},
		{"_INBOX.abc", Ack{}, false},
		{"", Ack{}, false},
	} {
		got, ok := ParseAck(tc.reply)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseAck(%q) = %+v, %v; want %+v, %v", tc.reply, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzDecode feeds the decoder headers as anybody can publish them (nats
// pub -H): it must never panic, and what it accepts must be usable. Its
// seed corpus runs in plain go test.
func FuzzDecode(f *testing.F) {
	f.Add("id-1", "", "email", "", "", ackSubj, "", "", "")
	f.Add("", "", "x", "3", "30s", ackSubj, "1", "2026-05-01T10:00:00Z", "high")
	f.Add("a", "b", "x", "-1", "1h", "", "0", "not a time", "urgent")
	f.Add("a", "", "", "0", "0s", "$JS.ACK.S.c.1.2.3.4.5", "", "", "")
	f.Add("", "", "x", "99999999999999999999", "1e9h", "$JS.ACK.a.b.c.d.e.f.g.h.i.j.k", "", "", "LOW")
	f.Add("", "", "x", "2", "9223372036s", "$JS.ACK....", "", "", "")
	f.Add("x\r\ny", "", "t\x00", "+3", "1ns", "$JS.ACK.S.c.18446744073709551615.18446744073709551615.1.1.1", "1", "9999-12-31T23:59:59.999999999+14:00", "")
	f.Fuzz(func(t *testing.T, msgID, taskID, typ, maxAttempts, timeout, reply, record, deadline, prio string) {
		h := nats.Header{}
		for k, v := range map[string]string{hdrID: msgID, hdrTaskID: taskID, hdrType: typ, hdrMaxAttempts: maxAttempts, hdrTimeout: timeout,
			hdrRecord: record, hdrDeadline: deadline, hdrPriority: prio} {
			if v != "" {
				h[k] = []string{v}
			}
		}
		got := Decode(h, reply)
		if got.Delivered < 1 || got.MaxAttempts < 1 || got.Timeout < 0 || !got.Priority.Valid() {
			t.Fatalf("got Delivered %d, MaxAttempts %d, Timeout %s, Priority %d: want ≥ 1, ≥ 1, ≥ 0, a level", got.Delivered, got.MaxAttempts, got.Timeout, got.Priority)
		}
		if got.Record != (record == "1") || deadline == "" && !got.Deadline.IsZero() {
			t.Fatalf("got Record %v, Deadline %v from %q and %q", got.Record, got.Deadline, record, deadline)
		}
		if got.Err != nil {
			return
		}
		if got.Type != typ || got.Type == "" || got.ID == "" {
			t.Fatalf("accepted type %q (header %q) and ID %q: want the header's type, and both set", got.Type, typ, got.ID)
		}
		if taskID != "" && got.ID != taskID || taskID == "" && msgID != "" && got.ID != msgID {
			t.Fatalf("got ID %q from Forq-Id %q and Nats-Msg-Id %q", got.ID, taskID, msgID)
		}
		if maxAttempts == "" && got.MaxAttempts != forq.DefaultMaxAttempts {
			t.Fatalf("got MaxAttempts %d without the header, want %d", got.MaxAttempts, forq.DefaultMaxAttempts)
		}
		if timeout == "" && got.Timeout != 0 {
			t.Fatalf("got Timeout %s without the header, want 0", got.Timeout)
		}
	})
}

// TestDeadLetter: a dead letter keeps its task's headers but the broker's
// own, adds the dead-letter ones, and reads back with DecodeDead; Retry
// takes it back to its queue as it was enqueued.
func TestDeadLetter(t *testing.T) {
	task := forq.Task{ID: "id-1", Queue: "q", Type: "x", Payload: []byte("p"), MaxAttempts: 2, Priority: forq.PriorityLow, Deadline: time.Now().Add(time.Hour), Record: true}
	m := NewMsg()
	m.Encode(&task)
	m.Header.Set(jetstream.ExpectedStreamHeader, forq.StreamTasks)
	m.Header.Set(jetstream.ScheduleNextHeader, "x")
	m.Header.Set(jetstream.SchedulerHeader, "x")
	m.Header.Set("X-Mine", "kept")
	long := strings.Repeat("é", maxError) + "\r\nsecond line"
	dead := DeadLetter(Letter{ID: task.ID, Queue: task.Queue, Attempts: 2, Error: long}, 42, m.Header, m.Data)
	if dead.Subject != DeadSubject("q") || string(dead.Data) != "p" {
		t.Errorf("got subject %q payload %q", dead.Subject, dead.Data)
	}
	for _, k := range []string{jetstream.ExpectedStreamHeader, jetstream.MsgTTLHeader, jetstream.ScheduleNextHeader, jetstream.SchedulerHeader} {
		if _, ok := dead.Header[k]; ok {
			t.Errorf("the letter has the broker's header %s", k)
		}
	}
	if dead.Header.Get(hdrID) != "id-1/dead/42" || dead.Header.Get("X-Mine") != "kept" || dead.Header.Get(hdrPriority) != "low" {
		t.Errorf("got headers %v", dead.Header)
	}
	e := dead.Header.Get(hdrError)
	if strings.ContainsAny(e, "\r\n") || len(e) != maxError+len("…") {
		t.Errorf("got %s of %d bytes, %q...; want one line of %d", hdrError, len(e), e[:20], maxError+len("…"))
	}
	if dead.Header.Get(hdrID) == m.Header.Get(hdrID) {
		t.Error("the letter's de-duplication key is the task's")
	}
	if got := DeadLetter(Letter{ID: "id-1", Queue: "q"}, 0, m.Header, nil).Header.Get(hdrID); got != "id-1" {
		t.Errorf("without a sequence: got key %q, want the ID", got)
	}

	l := DecodeDead(dead.Subject, dead.Header)
	if want := (Letter{ID: "id-1", Queue: "q", Type: "x", Attempts: 2, Error: e}); l != want {
		t.Errorf("DecodeDead: got %+v, want %+v", l, want)
	}
	back, err := Retry(l.ID, l.Queue, 7, dead.Header, dead.Data)
	if err != nil {
		t.Fatal(err)
	}
	if back.Subject != LevelSubject("q", forq.PriorityLow) || back.Header.Get(hdrID) != "id-1/retry/7" {
		t.Errorf("retry: got %s, headers %v", back.Subject, back.Header)
	}
	for _, k := range []string{hdrError, hdrAttempts, hdrQueue, hdrDeadline, jetstream.MsgTTLHeader, "X-Mine"} {
		if _, ok := back.Header[k]; ok {
			t.Errorf("retry: the task has header %s", k)
		}
	}
	got := Decode(back.Header, ackSubj)
	if got.Err != nil || got.ID != "id-1" || got.Type != "x" || got.MaxAttempts != 2 || !got.Record || got.Priority != forq.PriorityLow || !got.Deadline.IsZero() {
		t.Errorf("retried task decodes to %+v", got)
	}
}

func TestRetryErrors(t *testing.T) {
	h := hdr(hdrType, "x")
	for _, tc := range []struct {
		id, queue string
		h         nats.Header
		want      string
		is        error
	}{
		{"", "q", h, "retry dead letter 3: it has no Nats-Msg-Id header", nil},
		{"a", "bad queue", h, "retry a: ", forq.ErrInvalidQueue},
		{"a", "q", hdr(hdrError, "boom"), "retry a: the dead letter has no Forq-Type header", nil},
	} {
		_, err := Retry(tc.id, tc.queue, 3, tc.h, nil)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("Retry(%q, %q): got %v, want %q", tc.id, tc.queue, err, tc.want)
		}
	}
}

// TestPeriodicRoundTrip: a periodic task's definition reads back as it
// was written.
func TestPeriodicRoundTrip(t *testing.T) {
	for i, task := range []forq.Task{
		{Queue: "default", Type: "echo", Payload: []byte("tick"), MaxAttempts: 3},
		{Queue: "q", Type: "report", MaxAttempts: 1, Timeout: time.Hour, Record: true, Priority: forq.PriorityHigh},
	} {
		spec, tz := "@every 5m0s", ""
		if i == 1 {
			spec, tz = "0 0 9 * * 1", "Europe/Paris"
		}
		m := Periodic("s"+strconv.Itoa(i), spec, tz, &task)
		if m.Subject != PeriodicSubject("s"+strconv.Itoa(i)) || m.Header.Get(hdrID) != "" {
			t.Errorf("got subject %q, Nats-Msg-Id %q", m.Subject, m.Header.Get(hdrID))
		}
		gotSpec, gotTZ, got := DecodePeriodic(m.Header, m.Data)
		if gotSpec != spec || gotTZ != tz || got.Queue != task.Queue || got.Type != task.Type || !bytes.Equal(got.Payload, task.Payload) ||
			got.MaxAttempts != task.MaxAttempts || got.Timeout != task.Timeout || got.Record != task.Record || got.Priority != task.Priority {
			t.Errorf("%+v (%q, %q) read back as %+v (%q, %q)", task, spec, tz, got, gotSpec, gotTZ)
		}
	}
}

// BenchmarkDecode decodes a default task's headers as the broker delivers
// them (the worker's hot path).
func BenchmarkDecode(b *testing.B) {
	h := hdr(hdrID, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", hdrType, "email")
	b.ReportAllocs()
	for b.Loop() {
		_ = Decode(h, ackSubj)
	}
}
