package forq

import (
	"fmt"
	"strings"
)

// Priority is a task's priority level within its queue. There are three,
// fixed: PriorityLow < PriorityNormal < PriorityHigh. The zero value is
// PriorityNormal, the level of every task that does not ask for another.
//
// On the wire each level of a queue is a subject and a durable consumer of
// its own in StreamTasks (a work-queue stream, whose consumers' filters
// must not overlap):
//
//	level   subject                   consumer
//	high    forq.tasks.<queue>.high   <queue>--high
//	normal  forq.tasks.<queue>        <queue>
//	low     forq.tasks.<queue>.low    <queue>--low
//
// The normal level is the queue as it always was, so a task published by
// hand to forq.tasks.<queue> is a normal one. Queue names ending in
// "--high" or "--low" are reserved (ValidateQueue rejects them), so that a
// level's consumer name never is another queue's. A task of another level
// also carries HeaderPriority, for whoever looks at it (and so that a
// dead-lettered task goes back to its level when retried).
//
// Workers serve the levels highest first; see the consumer package.
type Priority int8

// The priority levels.
const (
	PriorityLow    Priority = -1
	PriorityNormal Priority = 0
	PriorityHigh   Priority = 1
)

// Priorities lists the levels, highest first: the order workers serve them.
var Priorities = [...]Priority{PriorityHigh, PriorityNormal, PriorityLow}

// HeaderPriority names a task's priority level ("high", "low") when it is
// not normal. The subject decides the level; the header only says it.
const HeaderPriority = "Forq-Priority"

// levelSep separates a queue's name from its level in a consumer name.
const levelSep = "--"

// String returns "low", "normal" or "high".
func (p Priority) String() string {
	switch p {
	case PriorityLow:
		return "low"
	case PriorityNormal:
		return "normal"
	case PriorityHigh:
		return "high"
	}
	return fmt.Sprintf("Priority(%d)", int8(p))
}

// Valid reports whether p is one of the three levels.
func (p Priority) Valid() bool { return p >= PriorityLow && p <= PriorityHigh }

// ParsePriority parses "low", "normal" or "high" (any case); "" is normal.
// The error wraps ErrInvalidOption.
func ParsePriority(s string) (Priority, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "low":
		return PriorityLow, nil
	case "", "normal":
		return PriorityNormal, nil
	case "high":
		return PriorityHigh, nil
	}
	return 0, fmt.Errorf("%w: priority %q: use low, normal or high", ErrInvalidOption, s)
}

// LevelSubject returns the subject of queue's tasks of priority p:
// TaskSubject(queue) for normal ones, forq.tasks.<queue>.<level> for others.
func LevelSubject(queue string, p Priority) string {
	if p == PriorityNormal {
		return TaskSubject(queue)
	}
	return TaskSubject(queue) + "." + p.String()
}

// LevelConsumerName returns the name of the durable consumer that workers
// of queue pull priority-p tasks from: the queue's name for normal tasks,
// <queue>--high and <queue>--low for the others.
func LevelConsumerName(queue string, p Priority) string {
	if p == PriorityNormal {
		return ConsumerName(queue)
	}
	return queue + levelSep + p.String()
}

// ParseConsumerName is the inverse of LevelConsumerName.
func ParseConsumerName(name string) (queue string, p Priority) {
	for _, p := range [...]Priority{PriorityHigh, PriorityLow} {
		if q, ok := strings.CutSuffix(name, levelSep+p.String()); ok {
			return q, p
		}
	}
	return name, PriorityNormal
}

// ParseTaskSubject returns the queue and level of a task subject
// (LevelSubject's inverse); ok is false for a subject that is not one.
func ParseTaskSubject(subject string) (queue string, p Priority, ok bool) {
	rest, found := strings.CutPrefix(subject, SubjectTasksPrefix)
	if !found || rest == "" {
		return "", 0, false
	}
	queue, level, dotted := strings.Cut(rest, ".")
	if !dotted {
		return queue, PriorityNormal, true
	}
	switch level {
	case "high":
		return queue, PriorityHigh, true
	case "low":
		return queue, PriorityLow, true
	}
	return "", 0, false
}

// reservedQueueSuffix reports the reserved suffix name ends with, if any.
func reservedQueueSuffix(name string) (string, bool) {
	for _, p := range [...]Priority{PriorityHigh, PriorityLow} {
		if s := levelSep + p.String(); strings.HasSuffix(name, s) {
			return s, true
		}
	}
	return "", false
}
