package forq

import (
	"strconv"
	"time"
)

// BucketWorkers is the KV bucket where every running worker process keeps
// its status under the key WorkerKey(host, pid), rewritten every few
// seconds. An entry expires WorkerStatusTTL after its last write, so a
// worker that died leaves the list on its own.
const BucketWorkers = "forq_workers"

// WorkerStatusTTL is how long a worker's status outlives its last update.
const WorkerStatusTTL = 15 * time.Second

// WorkerStatus is a worker process's entry in BucketWorkers, JSON-encoded.
type WorkerStatus struct {
	PID int `json:"pid"`
	// Host is the worker's name (consumer.Config.Name), by default its
	// host name; the key keeps the host name.
	Host        string    `json:"host"`
	Queues      []string  `json:"queues"`
	Types       []string  `json:"types"`
	Concurrency int       `json:"concurrency"`
	InFlight    int64     `json:"in_flight"`
	Processed   int64     `json:"processed"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	// Succeeded counts the tasks that succeeded on the worker since it
	// started, as its forq_tasks_processed_total does; Processed counts
	// every delivery it took, whatever the outcome.
	Succeeded int64 `json:"succeeded"`
	// LastMinute counts, per queue, what the worker finished in the last
	// 60 seconds.
	LastMinute map[string]MinuteCounts `json:"last_minute"`
	// RunningByQueue counts, per queue, the tasks whose handlers the
	// worker runs now (or is about to start: admitted, past their checks).
	RunningByQueue map[string]int `json:"running_by_queue,omitempty"`
	// Running lists those tasks, the longest running first: at most
	// MaxStatusTasks of them.
	Running []RunningTask `json:"running,omitempty"`
	// Restarts is how many times the worker's pool restarted its slot
	// after a crash before it (consumer.Config.Restarts); 0 for a worker
	// not run by a pool.
	Restarts int `json:"restarts"`
}

// MaxStatusTasks bounds WorkerStatus.Running.
const MaxStatusTasks = 256

// RunningTask is a task a worker runs now, in its WorkerStatus.
type RunningTask struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
	Type  string `json:"type"`
	// Seq is the stream sequence of the task's message in StreamTasks.
	Seq uint64 `json:"seq"`
	// Attempt is the attempt that runs: 1 for the first.
	Attempt int `json:"attempt"`
	// Started is when its handler started.
	Started time.Time `json:"started"`
}

// MinuteCounts are a worker's tasks of one queue in the last minute.
type MinuteCounts struct {
	// Processed is the tasks that succeeded (as forq_tasks_processed_total
	// counts them).
	Processed int64 `json:"processed"`
	// Failed is the attempts that failed (retried or dead-lettered), as
	// forq_tasks_failed_total counts them.
	Failed int64 `json:"failed"`
}

// WorkerKey is a worker's key in BucketWorkers: its host name (characters
// other than letters, digits, '-' and '_' replaced by '-') and PID.
func WorkerKey(host string, pid int) string {
	b := []byte(host)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	return string(b) + "_" + strconv.Itoa(pid)
}
