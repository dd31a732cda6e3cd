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
	PID         int       `json:"pid"`
	Host        string    `json:"host"`
	Queues      []string  `json:"queues"`
	Types       []string  `json:"types"`
	Concurrency int       `json:"concurrency"`
	InFlight    int64     `json:"in_flight"`
	Processed   int64     `json:"processed"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	// LastMinute counts, per queue, what the worker finished in the last
	// 60 seconds.
	LastMinute map[string]MinuteCounts `json:"last_minute"`
}

// MinuteCounts are a worker's tasks of one queue in the last minute.
type MinuteCounts struct {
	// Processed is every task finished, whatever the outcome.
	Processed int64 `json:"processed"`
	// Failed is the attempts that failed (retried or dead-lettered).
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
