// Package forq holds the vocabulary shared by every part of forq, a durable
// task queue on NATS JetStream: tasks, results and their states, the names
// forq uses on the wire (streams, subjects, consumers, KV buckets; a task's
// headers are listed in the README), and the errors callers branch on.
//
// forq takes Python's multiprocessing model — Process, Pool(n), Queue,
// subprocess, Lock — and makes it durable and shared across separate
// binaries, containers and hosts. Install it with
//
//	go get github.com/forqhq/forq
//
// The packages of the library build on this one:
//
//   - connect connects a program to the broker: URLs, credentials (token,
//     user and password, nkey seed, .creds file), TLS and reconnects, in
//     one Config that the forq command's connection flags fill;
//   - broker runs an embedded NATS server with JetStream (the queue): start,
//     wait until ready, shut down;
//   - producer enqueues tasks (one or a batch), waits for their results and
//     cancels them;
//   - consumer runs a worker: it pulls tasks and runs the handler of each
//     task's type, with retries, dead letters, leases and a graceful stop;
//     it also runs exec tasks (commands, Linux only);
//   - admin inspects and operates the queues: figures, a queue's tasks,
//     dead letters (retry, purge), pause and resume, record-all and
//     periodic schedules;
//   - lock is a mutex shared across processes, on a key of a KV bucket:
//     the Lock of multiprocessing, and the lock of tasks enqueued with a
//     lock key;
//   - pool supervises N child OS processes, restarting those that crash;
//     it knows nothing of NATS.
//
// forq, broker, connect, producer, consumer, admin and lock build and run
// on Linux, macOS and Windows; pool builds there but runs on Linux only. The command and
// the programs:
//
//   - cmd/forq is the command-line tool: broker, enqueue, work, pool, run,
//     stats, dead letters, schedules, the web dashboard, demos, bench;
//   - examples/producer and examples/worker are two small programs on the
//     library: one enqueues word counts, the other counts;
//   - examples/wordcount is the task type the two share: its type name
//     and its typed JSON payload (forq.Args).
//
// The packages under internal/ are forq's own (see docs/development.md):
//
//   - internal/cli implements cmd/forq's subcommands and flags;
//   - internal/ui is the web dashboard (forq ui, forq run --ui): a JSON
//     API over admin and the results bucket, and its embedded page;
//   - internal/wire is the one codec of the wire format: a task's headers,
//     the dead-letter rules, ack subjects, subjects and consumer names;
//   - internal/pull is the worker's pull engine: sources, the priority
//     scheduler, the puller, the acker and the dispatcher;
//   - internal/record owns a task record's states and their changes;
//   - internal/unique claims and releases unique keys;
//   - internal/kvcas holds the KV compare-and-set helpers;
//   - internal/sleep is a sleep that ends with its context;
//   - internal/topology looks up, and declares when missing, the streams,
//     consumers and KV buckets (forq init), and reads the broker's health;
//   - internal/heapfloor keeps the garbage collector of a busy worker with
//     a small heap from running too often;
//   - internal/bench measures forq against plain JetStream (forq bench);
//   - internal/torture is the fault-injection harness (forq torture);
//   - internal/testutil starts embedded brokers (and nats-servers with
//     limited users) for tests;
//   - internal/e2e tests built binaries in real processes, and
//     internal/e2e/poisonworker is a worker those tests crash on purpose;
//   - internal/archtest checks the import rules between these packages.
//
// The package imports nothing of NATS: its names are plain strings, so that
// programs in any language can speak forq's wire format.
package forq
