package admin_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
)

// Schedules are added (once, or replaced), read, listed and removed; bad
// ones are refused with the sentinel of their fault. The first write
// declares forq's streams.
func TestSchedules(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	s := admin.Schedule{Name: "nightly", Cron: "0 3 * * 7", TimeZone: "Europe/Paris",
		Task: forq.Task{Queue: "reports", Type: "report", Payload: []byte(`{"a":1}`), Timeout: time.Minute, Record: true, Priority: forq.PriorityLow}}
	if err := b.in.AddSchedule(ctx, s, false); err != nil {
		t.Fatal(err)
	}
	err := b.in.AddSchedule(ctx, s, false)
	wantErr(t, "second add", err, admin.ErrScheduleExists, "nightly")
	s.Task.Payload = []byte(`{"a":2}`)
	if err := b.in.AddSchedule(ctx, s, true); err != nil {
		t.Fatalf("replace: %v", err)
	}
	got, err := b.in.Schedule(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	g := got.Task
	desc := fmt.Sprintf("%s %q tz=%s -> %s/%s %s timeout=%s record=%v prio=%s attempts=%d", got.Name, got.Spec(), got.TimeZone, g.Queue, g.Type, g.Payload,
		g.Timeout, g.Record, g.Priority, g.MaxAttempts)
	if want := `nightly "0 0 3 * * 0" tz=Europe/Paris -> reports/report {"a":2} timeout=1m0s record=true prio=low attempts=3`; desc != want || got.Created.IsZero() {
		t.Errorf("Schedule(nightly): got %s (created %s), want %s", desc, got.Created, want)
	}
	if err := b.in.AddSchedule(ctx, admin.Schedule{Name: "tick", Every: 5 * time.Second, Task: forq.Task{Type: "t"}}, false); err != nil {
		t.Fatal(err)
	}
	ss, err := b.in.Schedules(ctx)
	if err != nil || len(ss) != 2 || ss[0].Name != "nightly" || ss[1].Name != "tick" || ss[1].Spec() != "@every 5s" || ss[1].Task.Queue != forq.DefaultQueue {
		t.Errorf("Schedules: %+v, %v; want nightly and tick (@every 5s, queue default)", ss, err)
	}

	if err := b.in.RemoveSchedule(ctx, "nightly"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "second remove", b.in.RemoveSchedule(ctx, "nightly"), admin.ErrScheduleNotFound, "nightly")
	_, err = b.in.Schedule(ctx, "nightly")
	wantErr(t, "Schedule of a removed one", err, admin.ErrScheduleNotFound, "nightly")
	if ss, err := b.in.Schedules(ctx); err != nil || len(ss) != 1 || ss[0].Name != "tick" {
		t.Errorf("Schedules after the removal: %+v, %v; want tick", ss, err)
	}
}

// AddSchedule refuses a bad schedule with the sentinel of its fault.
func TestAddScheduleRefusesBadOnes(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	for name, c := range map[string]struct {
		s    admin.Schedule
		want error
	}{
		"no spec":           {admin.Schedule{Name: "x", Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"both specs":        {admin.Schedule{Name: "x", Every: time.Minute, Cron: "@daily", Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"sub-second":        {admin.Schedule{Name: "x", Every: 1500 * time.Millisecond, Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"bad cron":          {admin.Schedule{Name: "x", Cron: "0 25 * * *", Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"never fires":       {admin.Schedule{Name: "x", Cron: "0 0 31 2 *", Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"bad time zone":     {admin.Schedule{Name: "x", Cron: "@daily", TimeZone: "Mars/Olympus", Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"zone on interval":  {admin.Schedule{Name: "x", Every: time.Minute, TimeZone: "UTC", Task: forq.Task{Type: "t"}}, forq.ErrInvalidOption},
		"task with an ID":   {admin.Schedule{Name: "x", Every: time.Minute, Task: forq.Task{Type: "t", ID: "fixed"}}, forq.ErrInvalidTask},
		"task with a delay": {admin.Schedule{Name: "x", Every: time.Minute, Task: forq.Task{Type: "t", Delay: time.Second}}, forq.ErrInvalidTask},
		"no type":           {admin.Schedule{Name: "x", Every: time.Minute}, forq.ErrInvalidTask},
		"bad name":          {admin.Schedule{Name: "a.b", Every: time.Minute, Task: forq.Task{Type: "t"}}, forq.ErrInvalidQueue},
		"bad queue":         {admin.Schedule{Name: "x", Every: time.Minute, Task: forq.Task{Type: "t", Queue: "a b"}}, forq.ErrInvalidQueue},
	} {
		if err := b.in.AddSchedule(ctx, c.s, false); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	if ss, err := b.in.Schedules(ctx); err != nil || len(ss) != 0 {
		t.Errorf("Schedules after bad adds: %+v, %v; want none", ss, err)
	}
}
