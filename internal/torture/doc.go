// Package torture is forq's fault-injection harness: it runs a real broker,
// a real "forq pool" and a producer, injects faults (SIGKILL of a worker,
// SIGSTOP/SIGCONT, a SIGKILL of the pool or of the broker), and checks
// afterwards, from history files, that the queue kept its promise: every
// task whose enqueue was acknowledged ran to completion, no task ran twice
// except where a fault explains it, and no two runs of one task overlapped.
//
// The history is a directory of JSON-lines files, one event a line:
//
//   - enqueued.jsonl: every task whose enqueue the producer saw
//     acknowledged (event "enqueued");
//   - runs-<pid>-<nonce>.jsonl: each worker process's handler starts and ends
//     (events "worker", "start", "end"), appended with O_APPEND by the
//     handler of the task type TypeSafe (or TypeUnsafe, the negative
//     control);
//   - faults.jsonl: every fault injected (event "fault") and every worker
//     process seen gone (event "gone").
//
// A write(2) to a file is kept by the kernel's page cache when its process
// is SIGKILLed right after, so no fsync is needed for the history to
// survive the faults injected here; a process killed in the middle of a
// write can leave a torn last line, which Read skips. A handler killed
// between its work and its "end" line leaves a run with no end: its task
// is not acknowledged either, so it runs again and a later run completes.
//
// Check computes the report; Run drives a whole run, as "forq torture"
// does.
package torture
