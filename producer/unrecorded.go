package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// Tasks that will never be recorded. A task enqueued without a record
// (no WithRecord, on a queue that does not record every task) gets no
// entry in forq.BucketResults unless it fails, so waiting for it would
// last until the waiter's deadline although the task finished long ago.
// The producer remembers the last maxUnrecorded tasks it enqueued that
// way; Wait and WaitMany, finding no final record for one of them once
// the watch has given the current values, return forq.ErrNotRecorded at
// once (a task that died has its final record, and gets it). A task ID
// this producer did not enqueue (another process did, or too long ago) is
// waited for as before: a record may yet come.

// maxUnrecorded bounds the tasks a producer remembers as enqueued without
// a record: about 100 bytes each.
const maxUnrecorded = 1 << 14

// unrecorded is the producer's memory of the tasks it enqueued without a
// record, the oldest forgotten first.
type unrecorded struct {
	mu    sync.Mutex
	tasks map[string]unrecordedTask
	ring  []string // task IDs by slot; the next one to reuse is at next
	next  int
}

type unrecordedTask struct {
	queue string
	slot  int
}

// add remembers that task id of queue was enqueued without a record.
func (u *unrecorded) add(id, queue string) {
	if _, ok := u.tasks[id]; ok {
		return
	}
	if u.tasks == nil {
		u.tasks = make(map[string]unrecordedTask)
	}
	slot := len(u.ring)
	if slot < maxUnrecorded {
		u.ring = append(u.ring, id)
	} else {
		slot = u.next
		if old := u.ring[slot]; u.tasks[old].slot == slot {
			delete(u.tasks, old)
		}
		u.ring[slot] = id
		u.next = (slot + 1) % maxUnrecorded
	}
	u.tasks[id] = unrecordedTask{queue: queue, slot: slot}
}

// note notes that t was enqueued: see enqueued.
func (u *unrecorded) note(t *forq.Task) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if t.Record {
		delete(u.tasks, t.ID)
	} else {
		u.add(t.ID, t.Queue)
	}
}

// enqueued notes how the tasks enqueued went: one without a record is
// remembered, one with a record (the same ID enqueued again with one)
// forgotten. Of more than maxUnrecorded tasks only the last ones count.
func (u *unrecorded) enqueued(tasks []forq.Task, ok func(i int) bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := max(0, len(tasks)-maxUnrecorded); i < len(tasks); i++ {
		t := &tasks[i]
		switch {
		case !ok(i):
		case t.Record:
			delete(u.tasks, t.ID)
		default:
			u.add(t.ID, t.Queue)
		}
	}
}

// queueOf returns the queue of task id if this producer remembers
// enqueueing it without a record.
func (u *unrecorded) queueOf(id string) (string, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	t, ok := u.tasks[id]
	return t.queue, ok
}

// neverRecorded returns those of ids, tasks with no final record, that
// will not get one (unless they die): this producer enqueued them without
// a record, to a queue that does not record every task.
func (p *Producer) neverRecorded(ctx context.Context, ids []string) []string {
	var out []string
	recordsAll := map[string]bool{}
	for _, id := range ids {
		q, ok := p.unrecorded.queueOf(id)
		if !ok {
			continue
		}
		all, known := recordsAll[q]
		if !known {
			all = p.recordsAll(ctx, q)
			recordsAll[q] = all
		}
		if !all {
			out = append(out, id)
		}
	}
	return out
}

// recordsAll reports whether queue records every task (see
// admin.Inspector.SetRecordAll); when it cannot tell, it says yes, so
// that a waiter waits rather than give up on a task that may be recorded.
func (p *Producer) recordsAll(ctx context.Context, queue string) bool {
	c, err := p.js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(queue))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false // no worker has declared the queue yet
	}
	if err != nil {
		return true
	}
	return c.CachedInfo().Config.Metadata[forq.MetadataRecord] == "1"
}

// notRecorded is the error of a wait for tasks that will never be recorded.
func notRecorded(ids []string, of int) error {
	if of == 1 {
		return fmt.Errorf("wait %s: %w: it was enqueued without a record; enqueue it WithRecord to wait for it", ids[0], forq.ErrNotRecorded)
	}
	return fmt.Errorf("wait: %w: %d of %d tasks were enqueued without a record (%s first); enqueue them WithRecord to wait for them", forq.ErrNotRecorded, len(ids), of, ids[0])
}
