// Package wire is the one codec of forq's wire format: what a task, a dead
// letter and a periodic task's definition look like as NATS messages, and
// what the broker's ack subjects say about a delivery.
//
// A task is one message on its queue's subject (forq.tasks.<queue>, or
// forq.tasks.<queue>.high / .low for the other priority levels). The body
// is the payload; the metadata are headers:
//
//	Nats-Msg-Id        the task ID (JetStream's de-duplication key)
//	Forq-Id            the task ID where Nats-Msg-Id cannot carry it
//	Forq-Type          the task type, which selects the handler (required)
//	Forq-Max-Attempts  how many times the task may run (absent: 3)
//	Forq-Timeout       bound on one attempt, a Go duration (absent: none)
//	Forq-Record        "1": record the task's state and result
//	Forq-Deadline      RFC 3339 time after which the task expires unstarted
//	Forq-Priority      "high" or "low", for information (the subject decides)
//	Forq-Lock          a lock key: tasks with one never run at once
//	Forq-Unique        a unique key, claimed in forq_unique by the producer
//
// A dead letter is the task's message on forq.dead.<queue> with three more:
// Forq-Error (the last error), Forq-Attempts and Forq-Queue.
//
// Every Forq-* header is named, written and read here, and nowhere else
// in forq: the producer encodes with Msg.Encode, the worker decodes with
// Decode, the dead-letter rules are DeadLetter, DecodeDead and Retry. The
// names are stable: workers of different versions share a queue, and
// people inspect a running system with the nats CLI (see the README).
//
// Decode reads outside input (anyone who can publish on a queue's subject
// can send any headers): it never panics and names a bad header in its
// error rather than guessing.
package wire
