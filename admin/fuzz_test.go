package admin

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Fuzz targets of what admin decodes from outside: schedule specs (a
// user's --cron and --every), schedule definitions and dead letters read
// back from the broker (anyone with the nats CLI can write one). Their
// seeds run in plain "go test"; .ci/run fuzzes each briefly.

var cronSeeds = []string{
	"0 9 * * 1", "0 9 * * 7", "0 9 * * 5-7", "0 9 * * 5-7/2", "*/5 * * * *", "0 0 31 2 *", "0 0 29 2 *",
	"0 0 31 4,6 ?", "0 0 31 2 1", "0 0 31 2 */2", "30 0 9 * * mon-fri", "0 0 1 jan,jul *", "@daily", "@weekly",
	"@fortnightly", "", "* * *", "0 25 * * *", "0 9 * * 8", "1-2-3 * * * *", "1/2/3 * * * *", "1,,2 * * * *",
	"*/0 * * * *", "5-1 * * * *", "-1 * * * *", "+5 * * * *", "0 0 0 1 1 * *", "? ? ? ? ? ?", "7/2 * * * *",
	"0 0 * * 7/2", "0 0 * * SUN", "0 0 * FEB-DEC *",
}

// A cron expression is refused with a message naming the problem, or
// normalized into one the broker reads (6 fields, day-of-week 0-6, a day
// that occurs), which normalizes to itself.
func FuzzNormalizeCron(f *testing.F) {
	for _, s := range cronSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		out, err := normalizeCron(expr)
		if err != nil {
			if out != "" || err.Error() == "" {
				t.Fatalf("%q: error %v with output %q", expr, err, out)
			}
			return
		}
		if again, err := normalizeCron(out); err != nil || again != out {
			t.Fatalf("%q normalizes to %q, which normalizes to %q, %v", expr, out, again, err)
		}
		if cronMacros[out] {
			return
		}
		f := strings.Fields(out)
		if len(f) != 6 {
			t.Fatalf("%q normalizes to %q: %d fields, want 6", expr, out, len(f))
		}
		dow, err := parseCronField(f[cronDOW], cronDOW)
		if err != nil || dow.bits&(1<<7) != 0 {
			t.Fatalf("%q normalizes to %q, whose day-of-week %q the broker cannot read (7 left, or %v)", expr, out, f[cronDOW], err)
		}
	})
}

// A schedule that validates is stored (scheduleMsg) and read back
// (decodeSchedule) as it was: its spec, time zone and task.
func FuzzScheduleRoundTrip(f *testing.F) {
	for i, c := range cronSeeds {
		f.Add("s"+strconv.Itoa(i), int64(0), c, "", "q", "echo", []byte(`{"a":1}`), 3, int64(0), false, "normal")
	}
	f.Add("tick", int64(2*time.Second), "", "", "default", "echo", []byte("tock"), 1, int64(time.Minute), true, "high")
	f.Add("bad", int64(1500*time.Millisecond), "", "", "default", "echo", []byte(nil), 0, int64(-1), false, "low")
	f.Add("paris", int64(0), "0 9 * * 1", "Europe/Paris", "reports", "report", []byte{}, 5, int64(time.Hour+time.Second/2), false, "")
	f.Add("x", int64(time.Second), "", "Europe/Paris", "q", "t", []byte(nil), 0, int64(0), false, "urgent")
	f.Fuzz(func(t *testing.T, name string, every int64, cron, tz, queue, typ string, payload []byte, maxAttempts int, timeout int64, record bool, prio string) {
		p, err := forq.ParsePriority(prio)
		if err != nil {
			return
		}
		s := Schedule{Name: name, Every: time.Duration(every), Cron: cron, TimeZone: tz,
			Task: forq.Task{Queue: queue, Type: typ, Payload: payload, MaxAttempts: maxAttempts, Timeout: time.Duration(timeout), Record: record, Priority: p}}
		if err := s.Validate(); err != nil {
			return
		}
		m := scheduleMsg(s)
		got := decodeSchedule(name, &jetstream.RawStreamMsg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		want := s.Task
		if got.Name != s.Name || got.Every != s.Every || got.Cron != s.Cron || got.TimeZone != s.TimeZone || got.Spec() != s.Spec() {
			t.Fatalf("schedule %+v read back as %+v", s, got)
		}
		g := got.Task
		if g.Queue != want.Queue || g.Type != want.Type || !bytes.Equal(g.Payload, want.Payload) || g.MaxAttempts != want.MaxAttempts ||
			g.Timeout != want.Timeout || g.Record != want.Record || g.Priority != want.Priority {
			t.Fatalf("task %+v read back as %+v", want, g)
		}
	})
}

// A schedule definition anyone may have published on forq.periodic.<name>
// is read without a panic, whatever its headers say.
func FuzzDecodeSchedule(f *testing.F) {
	f.Add("@every 2s", "forq.tasks.default", "echo", "3", "1m", "1", "", []byte("x"))
	f.Add("0 0 9 * * 1", "forq.tasks.q.high", "t", "x", "soon", "", "Europe/Paris", []byte(nil))
	f.Add("@every -5s", "forq.tasks.", "", "-1", "-1s", "yes", "Mars/Olympus", []byte{})
	f.Add("", "elsewhere", "", "99999999999999999999", "", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, spec, target, typ, attempts, timeout, record, tz string, payload []byte) {
		h := nats.Header{}
		for k, v := range map[string]string{jetstream.ScheduleHeader: spec, jetstream.ScheduleTargetHeader: target, "Forq-Type": typ,
			"Forq-Max-Attempts": attempts, "Forq-Timeout": timeout, "Forq-Record": record, jetstream.ScheduleTimeZoneHeader: tz} {
			if v != "" {
				h.Set(k, v)
			}
		}
		s := decodeSchedule("x", &jetstream.RawStreamMsg{Subject: wire.PeriodicSubject("x"), Header: h, Data: payload})
		if s.Name != "x" || !bytes.Equal(s.Task.Payload, payload) {
			t.Fatalf("decoded %+v from headers %v", s, h)
		}
		if s.Every != 0 && s.Cron != "" {
			t.Fatalf("spec %q decoded as both every %s and cron %q", spec, s.Every, s.Cron)
		}
	})
}

// A dead letter is read from its headers without a panic: its ID is
// Forq-Id, else Nats-Msg-Id; its queue is Forq-Queue, else its subject's
// last token; its payload is never nil.
func FuzzDeadLetter(f *testing.F) {
	f.Add("forq.dead.default", "id-1", "", "", "echo", "boom", "3", []byte("x"))
	f.Add("forq.dead.q", "id-1/retry/7", "id-1", "other", "t", "", "x", []byte(nil))
	f.Add("", "", "", "", "", "", "-1", []byte{})
	f.Add("forq.dead.", "a b", "c.d", "", "", "\x00", "99999999999999999999", []byte(nil))
	f.Fuzz(func(t *testing.T, subject, msgID, taskID, queue, typ, errText, attempts string, payload []byte) {
		h := nats.Header{}
		for k, v := range map[string]string{"Nats-Msg-Id": msgID, "Forq-Id": taskID, "Forq-Queue": queue,
			"Forq-Type": typ, "Forq-Error": errText, "Forq-Attempts": attempts} {
			if v != "" {
				h.Set(k, v)
			}
		}
		d := letter(7, subject, time.Unix(1, 0), h, payload)
		wantID := taskID
		if wantID == "" {
			wantID = msgID
		}
		wantQueue := queue
		if wantQueue == "" {
			wantQueue = strings.TrimPrefix(subject, forq.SubjectDeadPrefix)
		}
		if d.ID != wantID || d.Queue != wantQueue || d.Payload == nil || !bytes.Equal(d.Payload, payload) || d.Seq != 7 {
			t.Fatalf("dead letter from %q %v: %+v; want ID %q, queue %q", subject, h, d, wantID, wantQueue)
		}
		if n, err := strconv.Atoi(attempts); err == nil && d.Attempts != n {
			t.Fatalf("Forq-Attempts %q read as %d", attempts, d.Attempts)
		}
	})
}
