package producer

import (
	"strconv"
	"testing"

	"github.com/forqhq/forq"
)

// The memory of unrecorded tasks keeps the last maxUnrecorded, forgets a
// task enqueued again with a record, and a slot reused for a task does not
// forget another task of the same ID remembered later.
func TestUnrecordedMemory(t *testing.T) {
	var u unrecorded
	all := func(int) bool { return true }
	n := maxUnrecorded + 10
	tasks := make([]forq.Task, n)
	for i := range tasks {
		tasks[i] = forq.Task{ID: strconv.Itoa(i), Queue: "q"}
	}
	u.enqueued(tasks[:5], all)
	u.enqueued(tasks[5:], all)
	for _, tc := range []struct {
		id   string
		want bool
	}{{"0", false}, {"9", false}, {"10", true}, {strconv.Itoa(n - 1), true}} {
		if _, ok := u.queueOf(tc.id); ok != tc.want {
			t.Errorf("task %s remembered: got %v, want %v", tc.id, ok, tc.want)
		}
	}
	if len(u.tasks) != maxUnrecorded {
		t.Errorf("remembers %d tasks, want %d", len(u.tasks), maxUnrecorded)
	}
	// Enqueued again with a record: forgotten; then without one again:
	// remembered in a new slot, which the old slot's reuse leaves alone.
	// Task 11 is in slot 11; the next slot to reuse is 10.
	u.enqueued([]forq.Task{{ID: "11", Queue: "q", Record: true}}, all)
	if _, ok := u.queueOf("11"); ok {
		t.Errorf("task 11 enqueued with a record is still remembered")
	}
	u.enqueued([]forq.Task{{ID: "11", Queue: "r"}}, all) // slot 10
	u.enqueued([]forq.Task{{ID: "x", Queue: "q"}}, all)  // slot 11, task 11's old one
	if q, ok := u.queueOf("11"); !ok || q != "r" {
		t.Errorf("task 11 enqueued again: got %q, %v; want queue r, remembered", q, ok)
	}
	if _, ok := u.queueOf("10"); ok {
		t.Errorf("task 10, the oldest, is still remembered")
	}
	// Tasks not enqueued are not remembered.
	u.enqueued([]forq.Task{{ID: "z", Queue: "q"}}, func(int) bool { return false })
	if _, ok := u.queueOf("z"); ok {
		t.Errorf("a task not enqueued is remembered")
	}
}
