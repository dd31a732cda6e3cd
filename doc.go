// Package forq holds the vocabulary shared by every part of forq, a durable
// task queue on NATS JetStream: tasks, results and their states, the names
// forq uses on the wire (streams, subjects, consumers, headers, KV bucket),
// and the errors callers branch on.
//
// forq takes Python's multiprocessing model — Process, Pool(n), Queue,
// subprocess, Lock — and makes it durable and shared across separate
// binaries, containers and hosts. The packages build on this one:
//
//   - broker runs an embedded NATS server with JetStream (the queue);
//   - producer enqueues tasks and waits for their results;
//   - consumer pulls tasks and runs handlers, with retries and dead letters;
//   - pool supervises N worker OS processes;
//   - cmd/forq is the command-line tool that ties them together.
//
// The package imports nothing of NATS: its names are plain strings, so that
// programs in any language can speak forq's wire format.
package forq
