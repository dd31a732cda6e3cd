package wire

import (
	"strings"

	"github.com/forqhq/forq"
)

// Subjects and consumer names, built from the prefixes and stream names
// the root package documents (forq.SubjectTasksPrefix, ...). Only this
// file puts them together or takes them apart.

// levelSep separates a queue's name from its level in a consumer name.
// forq.ValidateQueue rejects the queue names that end with it and a level
// (TestLevelConsumerNamesAreNoQueues).
const levelSep = "--"

// TaskSubject returns the subject tasks of queue are published to:
// forq.tasks.<queue>, the subject of its normal priority level.
func TaskSubject(queue string) string { return forq.SubjectTasksPrefix + queue }

// LevelSubject returns the subject of queue's tasks of priority p:
// TaskSubject(queue) for normal ones, forq.tasks.<queue>.<level> for
// others (see forq.Priority).
func LevelSubject(queue string, p forq.Priority) string {
	if p == forq.PriorityNormal {
		return TaskSubject(queue)
	}
	return TaskSubject(queue) + "." + p.String()
}

// ParseTaskSubject returns the queue and level of a task subject
// (LevelSubject's inverse); ok is false for a subject that is not one.
func ParseTaskSubject(subject string) (queue string, p forq.Priority, ok bool) {
	rest, found := strings.CutPrefix(subject, forq.SubjectTasksPrefix)
	if !found || rest == "" {
		return "", 0, false
	}
	queue, level, dotted := strings.Cut(rest, ".")
	if !dotted {
		return queue, forq.PriorityNormal, true
	}
	switch level {
	case "high":
		return queue, forq.PriorityHigh, true
	case "low":
		return queue, forq.PriorityLow, true
	}
	return "", 0, false
}

// ConsumerName returns the name of the durable consumer that all workers
// of queue share for its normal level. It is the queue's name.
func ConsumerName(queue string) string { return queue }

// LevelConsumerName returns the name of the durable consumer that workers
// of queue pull priority-p tasks from: the queue's name for normal tasks,
// <queue>--high and <queue>--low for the others.
func LevelConsumerName(queue string, p forq.Priority) string {
	if p == forq.PriorityNormal {
		return ConsumerName(queue)
	}
	return queue + levelSep + p.String()
}

// ParseConsumerName is the inverse of LevelConsumerName.
func ParseConsumerName(name string) (queue string, p forq.Priority) {
	for _, p := range [...]forq.Priority{forq.PriorityHigh, forq.PriorityLow} {
		if q, ok := strings.CutSuffix(name, levelSep+p.String()); ok {
			return q, p
		}
	}
	return name, forq.PriorityNormal
}

// DeadSubject returns the subject dead-lettered tasks of queue go to:
// forq.dead.<queue>.
func DeadSubject(queue string) string { return forq.SubjectDeadPrefix + queue }

// ScheduleSubject returns the subject of the schedule that holds delayed
// task id of queue until it is due: forq.schedule.<queue>.<id>.
func ScheduleSubject(queue, id string) string {
	return forq.SubjectSchedulePrefix + queue + "." + id
}

// ScheduleFilter returns the subject filter of delayed task id's schedule,
// whatever its queue: forq.schedule.*.<id>.
func ScheduleFilter(id string) string { return forq.SubjectSchedulePrefix + "*." + id }

// PeriodicSubject returns the subject of periodic task definition name:
// forq.periodic.<name>.
func PeriodicSubject(name string) string { return forq.SubjectPeriodicPrefix + name }

// PeriodicName returns the name of the periodic task definition on
// subject (PeriodicSubject's inverse); subject itself if it is not one.
func PeriodicName(subject string) string {
	return strings.TrimPrefix(subject, forq.SubjectPeriodicPrefix)
}

// RunningSubject returns the subject on which workers of queue are asked
// whether they still run a task: forq.running.<queue> (see
// forq.SubjectRunningPrefix).
func RunningSubject(queue string) string { return forq.SubjectRunningPrefix + queue }

// OutputSubject returns the subject on which a worker publishes the
// stream ("stdout" or "stderr") of exec task id's command; see
// forq.SubjectOutputPrefix. OutputSubject(id, "*") covers both.
func OutputSubject(id, stream string) string { return forq.SubjectOutputPrefix + id + "." + stream }
