package wire

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers a dead letter has beside its task's.
const (
	// hdrError carries a dead-lettered task's last error.
	hdrError = "Forq-Error"
	// hdrAttempts carries the number of attempts a dead-lettered task made.
	hdrAttempts = "Forq-Attempts"
	// hdrQueue carries the queue a dead-lettered task came from.
	hdrQueue = "Forq-Queue"
)

// maxError bounds the length of Forq-Error: a header is not a log.
const maxError = 2048

// Letter is what a dead letter's headers say of its task.
type Letter struct {
	// ID of the task (not of the letter: see DeadLetter).
	ID string
	// Queue the task came from.
	Queue string
	// Type of the task.
	Type string
	// Attempts the task made; 0 when the header does not say.
	Attempts int
	// Error of the task's last attempt.
	Error string
}

// DeadLetter returns the dead letter of the task l.ID of queue l.Queue,
// delivered with headers h and payload, after l.Attempts attempts that
// ended with l.Error. The letter keeps the task's headers (less those of
// the broker's that a publish may not carry) and adds Forq-Error (on one
// line, at most 2 KiB), Forq-Attempts, Forq-Queue and Forq-Id.
//
// seq is the stream sequence of the task's message, 0 if unknown: the
// letter's de-duplication key (Nats-Msg-Id) is "<id>/dead/<seq>", this
// delivery's, so that a worker that dies between publishing the letter
// and acking the task publishes the same key again and the broker keeps
// one letter, while the same task dying again later (retried, or enqueued
// again) gets a letter of its own.
func DeadLetter(l Letter, seq uint64, h nats.Header, payload []byte) *nats.Msg {
	m := nats.NewMsg(DeadSubject(l.Queue))
	m.Data = payload
	for k, vs := range h {
		// Nats-Schedule-Next and Nats-Scheduler (on a task a schedule
		// fired) are the broker's own: a publish carrying them is refused.
		if k == jetstream.ExpectedStreamHeader || k == jetstream.MsgTTLHeader || strings.HasPrefix(k, "Nats-Schedule") {
			continue
		}
		m.Header[k] = slices.Clone(vs)
	}
	key := l.ID
	if seq != 0 {
		key += "/dead/" + strconv.FormatUint(seq, 10)
	}
	m.Header.Set(hdrID, key)
	m.Header.Set(hdrTaskID, l.ID)
	msg := l.Error
	if len(msg) > maxError {
		msg = msg[:maxError] + "…"
	}
	m.Header.Set(hdrError, oneLine(msg))
	m.Header.Set(hdrAttempts, strconv.Itoa(l.Attempts))
	m.Header.Set(hdrQueue, l.Queue)
	return m
}

// oneLine keeps a header value on one line.
func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

// DecodeDead reads the dead letter on subject whose headers are h. Its
// ID is Forq-Id, else Nats-Msg-Id; its queue is Forq-Queue, else the
// subject's last token. It never fails: a letter anyone may have
// published reads as what its headers say.
func DecodeDead(subject string, h nats.Header) Letter {
	l := Letter{ID: TaskID(h), Queue: h.Get(hdrQueue), Type: h.Get(hdrType), Error: h.Get(hdrError)}
	if l.Queue == "" {
		l.Queue = strings.TrimPrefix(subject, forq.SubjectDeadPrefix)
	}
	l.Attempts, _ = strconv.Atoi(h.Get(hdrAttempts))
	return l
}

// notRetried are the headers of a dead letter that do not go back with
// the task: the dead-letter metadata, and its deadline, which has passed
// or soon would (a retry is an explicit decision to run the task).
var notRetried = map[string]bool{hdrError: true, hdrAttempts: true, hdrQueue: true, hdrDeadline: true}

// Retry returns the message that puts the task of dead letter seq (task
// id of queue, with headers h and payload) back on its queue as it was
// enqueued: on its priority level's subject, with its Forq-* headers but
// the dead-letter ones (and its deadline), its ID in Forq-Id, and the
// de-duplication key "<id>/retry/<seq>", so that the broker does not drop
// it as a duplicate of the task's first enqueue, and drops a second retry
// of the same letter. The error names what the letter lacks: an ID, a
// valid queue (it wraps forq.ErrInvalidQueue then) or a type.
func Retry(id, queue string, seq uint64, h nats.Header, payload []byte) (*nats.Msg, error) {
	if id == "" {
		return nil, fmt.Errorf("retry dead letter %d: it has no %s header", seq, hdrID)
	}
	if err := forq.ValidateQueue(queue); err != nil {
		return nil, fmt.Errorf("retry %s: %w", id, err)
	}
	prio, _ := forq.ParsePriority(h.Get(hdrPriority))
	m := nats.NewMsg(LevelSubject(queue, prio))
	m.Data = payload
	for k, vs := range h {
		if strings.HasPrefix(k, "Forq-") && !notRetried[k] && len(vs) > 0 {
			m.Header[k] = slices.Clone(vs)
		}
	}
	m.Header.Set(hdrTaskID, id)
	m.Header.Set(hdrID, id+"/retry/"+strconv.FormatUint(seq, 10))
	if m.Header.Get(hdrType) == "" {
		return nil, fmt.Errorf("retry %s: the dead letter has no %s header", id, hdrType)
	}
	return m, nil
}

// Type returns the task type of the message whose headers are h.
func Type(h nats.Header) string { return h.Get(hdrType) }
