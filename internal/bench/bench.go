// Package bench measures forq's throughput, latency and footprint, and the
// same figures for plain JetStream in the same process layout (the
// baseline): an embedded broker in the benchmarking process, a producer
// process and a pool of worker processes, all of them re-executions of the
// forq binary. It backs "forq bench".
//
// Each figure is measured, never assumed. Throughput is counted from the
// producer's first publish (or, for a drain, from resuming the paused
// queue) until the broker reports every task acknowledged. Latency is from
// the producer's clock just before it publishes a task, carried in the
// task's payload, to the worker's clock when its handler starts; the worker
// reports it over a core NATS subject. Both clocks are the host's wall
// clock.
package bench

import (
	"encoding/binary"
	"time"
)

// Modes of a run.
const (
	// ModeForq uses forq's producer and consumer packages.
	ModeForq = "forq"
	// ModeBaseline uses plain JetStream: async publish, pull fetch in
	// batches, explicit acks.
	ModeBaseline = "baseline"
)

// Names on the broker.
const (
	// Queue is the forq queue the benchmark uses.
	Queue = "bench"
	// TaskType is the no-op task type of the benchmark's workers.
	TaskType = "bench.noop"
	// BaselineStream is the stream of the baseline: work-queue retention and
	// file storage, like forq.StreamTasks.
	BaselineStream = "FORQBENCH_BASELINE"
	// BaselineSubject is the subject baseline tasks are published to.
	BaselineSubject = "forqbench.tasks"
	// BaselineConsumer is the durable pull consumer of the baseline workers.
	BaselineConsumer = "bench"
	// BaselineResults is the KV bucket of the baseline's results.
	BaselineResults = "FORQBENCH_RESULTS"
	// ResultHeader names the key of BaselineResults a baseline task's
	// worker puts its result under.
	ResultHeader = "Bench-Result"
	// ReportSubject carries latency reports from workers to the producer.
	ReportSubject = "forqbench.report"
)

// MinPayload is the smallest payload: a task carries its enqueue time and
// its probe number in its first 16 bytes.
const MinPayload = 16

// Payload returns a payload of size bytes (at least MinPayload) stamped
// with the current wall clock and probe (0: not a latency probe).
func Payload(size int, probe uint64) []byte {
	p := make([]byte, max(size, MinPayload))
	Stamp(p, probe)
	return p
}

// Stamp writes the current wall clock and probe into p's first 16 bytes.
func Stamp(p []byte, probe uint64) {
	binary.LittleEndian.PutUint64(p[0:8], uint64(time.Now().UnixNano()))
	binary.LittleEndian.PutUint64(p[8:16], probe)
}

// Probe returns the probe number of a payload, 0 when it is not a probe.
func Probe(p []byte) uint64 {
	if len(p) < MinPayload {
		return 0
	}
	return binary.LittleEndian.Uint64(p[8:16])
}

// report is what a worker sends for a probe: its number and the handler's
// start time.
func report(probe uint64, start time.Time) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b[0:8], probe)
	binary.LittleEndian.PutUint64(b[8:16], uint64(start.UnixNano()))
	return b
}

func enqueuedAt(p []byte) int64 { return int64(binary.LittleEndian.Uint64(p[0:8])) }
