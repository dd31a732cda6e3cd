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
// also carries a Forq-Priority header, for whoever looks at it (and so
// that a dead-lettered task goes back to its level when retried).
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

// levelSep separates a queue's name from its level in a consumer name
// (built by internal/wire, whose tests check that ValidateQueue rejects
// every name it builds for a level other than normal).
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

// reservedSuffixes are the suffixes of the priority levels' consumers,
// made once: every enqueue checks its queue's name against them.
var reservedSuffixes = [...]string{levelSep + PriorityHigh.String(), levelSep + PriorityLow.String()}

// reservedQueueSuffix reports the reserved suffix name ends with, if any.
func reservedQueueSuffix(name string) (string, bool) {
	for _, s := range reservedSuffixes {
		if strings.HasSuffix(name, s) {
			return s, true
		}
	}
	return "", false
}
