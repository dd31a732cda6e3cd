package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Phases of a producer process.
const (
	// PhaseLatency sends probes one at a time at idle, then at a fixed rate.
	PhaseLatency = "latency"
	// PhaseEnqueue enqueues tasks one by one (synchronously), then one by
	// one from ConcurrentProducers goroutines at once, then in a batch,
	// into a paused queue.
	PhaseEnqueue = "enqueue"
	// PhaseE2E enqueues a batch while the workers run.
	PhaseE2E = "e2e"
	// PhaseResults enqueues a batch with each task's result recorded
	// while the workers run, and waits for every result.
	PhaseResults = "results"
)

// ConcurrentProducers is how many goroutines of one producer process
// enqueue at once in PhaseEnqueue's concurrent part, each one task at a
// time and waiting for its ack, as the handlers of a web server do.
const ConcurrentProducers = 16

// ProducerOptions configure one producer process of a run.
type ProducerOptions struct {
	Mode, Phase string
	// Tasks is the batch size of PhaseEnqueue and PhaseE2E.
	Tasks int
	// Single is how many tasks PhaseEnqueue enqueues one by one.
	Single int
	// Concurrent is how many tasks PhaseEnqueue enqueues one by one from
	// ConcurrentProducers goroutines.
	Concurrent int
	// PayloadSize of each task in bytes (at least MinPayload).
	PayloadSize int
	// Samples is the number of idle latency probes; LoadTasks the number
	// sent at Rate per second.
	Samples, LoadTasks int
	Rate               float64
	// BrokerPID, if not 0, is the broker's process, whose CPU time the
	// one-at-a-time and concurrent enqueues measure (from /proc).
	BrokerPID int
	// Headers makes the baseline publish the headers forq gives a task with
	// the default options (a unique Nats-Msg-Id, so the broker
	// de-duplicates, and Forq-Type), to tell the wire format's cost from
	// forq's code's.
	Headers bool
	// Queues, if not 0, spreads the batch of PhaseE2E over that many
	// queues, task i to QueueName(i % Queues); else all go to Queue.
	Queues int
}

// ProducerResult is what a producer process prints, as JSON.
type ProducerResult struct {
	// StartNs is the wall clock just before the first publish.
	StartNs int64 `json:"start_ns"`
	// LastSeq is the highest stream sequence acknowledged.
	LastSeq      uint64  `json:"last_seq"`
	SinglePerSec float64 `json:"single_per_sec,omitempty"`
	// ConcurrentPerSec is the rate of PhaseEnqueue's concurrent part.
	ConcurrentPerSec float64 `json:"concurrent_per_sec,omitempty"`
	// Single and Concurrent are the CPU time per task of the one at a
	// time and concurrent enqueues: this process's, and the broker's when
	// its BrokerPID was given.
	Single      CPUSplit `json:"single"`
	Concurrent  CPUSplit `json:"concurrent"`
	BatchPerSec float64  `json:"batch_per_sec,omitempty"`
	// IdleNs and LoadNs are the latencies of the probes, enqueue to
	// handler start.
	IdleNs     []int64 `json:"idle_ns,omitempty"`
	LoadNs     []int64 `json:"load_ns,omitempty"`
	LoadPerSec float64 `json:"load_per_sec,omitempty"`
	// ResultsPerSec is PhaseResults' throughput: tasks ÷ the time from
	// the first publish until every task's result was in.
	ResultsPerSec float64 `json:"results_per_sec,omitempty"`
}

// CPUSplit is the CPU time per task, user and system, of the producer
// process and of the broker, in microseconds.
type CPUSplit struct {
	ProducerUs float64 `json:"producer_us"`
	BrokerUs   float64 `json:"broker_us,omitempty"`
}

// cpuMeter measures a CPUSplit.
type cpuMeter struct {
	broker       int
	self0, brok0 int64
}

func startCPU(brokerPID int) *cpuMeter {
	m := &cpuMeter{broker: brokerPID}
	m.self0, _ = cpuTimes()
	if brokerPID != 0 {
		m.brok0 = cpuOf(brokerPID)
	}
	return m
}

// per returns the CPU time since startCPU divided by n tasks.
func (m *cpuMeter) per(n int) CPUSplit {
	self, _ := cpuTimes()
	s := CPUSplit{ProducerUs: round(float64(self-m.self0)/1e3/float64(n), 2)}
	if m.broker != 0 {
		s.BrokerUs = round(float64(cpuOf(m.broker)-m.brok0)/1e3/float64(n), 2)
	}
	return s
}

// publisher is what the two modes have in common.
type publisher interface {
	one(ctx context.Context, payload []byte) (uint64, error)
	// batch turns payloads into what the client's batch call takes (forq
	// tasks, JetStream messages), before the clock starts: a caller has
	// its work in hand before it enqueues it.
	batch(payloads [][]byte) any
	many(ctx context.Context, batch any) (uint64, error)
	// recorded is many with every task's result recorded, and waits
	// until each task has a final result; it returns the last stream
	// sequence of the tasks.
	recorded(ctx context.Context, batch any) (uint64, error)
}

type forqPub struct {
	p      *producer.Producer
	queues int // see ProducerOptions.Queues
}

func (f forqPub) one(ctx context.Context, payload []byte) (uint64, error) {
	i, err := f.p.Enqueue(ctx, forq.Task{Queue: Queue, Type: TaskType, Payload: payload})
	if err != nil {
		return 0, err
	}
	return i.Sequence, nil
}

func (f forqPub) batch(payloads [][]byte) any {
	tasks := make([]forq.Task, len(payloads))
	for i, p := range payloads {
		q := Queue
		if f.queues > 0 {
			q = QueueName(i % f.queues)
		}
		tasks[i] = forq.Task{Queue: q, Type: TaskType, Payload: p}
	}
	return tasks
}

func (f forqPub) many(ctx context.Context, batch any) (uint64, error) {
	infos, err := f.p.EnqueueMany(ctx, batch.([]forq.Task))
	if err != nil {
		return 0, err
	}
	var last uint64
	for _, i := range infos {
		last = max(last, i.Sequence)
	}
	return last, nil
}

func (f forqPub) recorded(ctx context.Context, batch any) (uint64, error) {
	tasks := batch.([]forq.Task)
	infos, err := f.p.EnqueueMany(ctx, tasks, producer.WithRecord())
	if err != nil {
		return 0, err
	}
	ids := make([]string, len(infos))
	var last uint64
	for i, in := range infos {
		ids[i], last = in.ID, max(last, in.Sequence)
	}
	res, err := f.p.WaitMany(ctx, ids)
	if err != nil {
		return 0, err
	}
	for i, r := range res {
		if r.State != forq.StateSucceeded {
			return 0, fmt.Errorf("task %s ended %s: %s", ids[i], r.State, r.Error)
		}
	}
	return last, nil
}

type basePub struct {
	js      jetstream.JetStream
	headers bool
	queues  int // see ProducerOptions.Queues
}

// recorded is what a plain JetStream program does for results at the
// least: each message names a key (ResultHeader) of BaselineResults, which
// the worker puts before it acks; the producer watches the bucket until
// every key is there.
func (b basePub) recorded(ctx context.Context, batch any) (uint64, error) {
	msgs := batch.([]*nats.Msg)
	kv, err := b.js.KeyValue(ctx, BaselineResults)
	if err != nil {
		return 0, err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = w.Stop() }()
	for i, m := range msgs {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(ResultHeader, strconv.Itoa(i))
	}
	last, err := b.many(ctx, batch)
	if err != nil {
		return 0, err
	}
	seen := make([]bool, len(msgs))
	for left := len(msgs); left > 0; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return 0, errors.New("watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			i, err := strconv.Atoi(e.Key())
			if err != nil || i < 0 || i >= len(seen) || seen[i] {
				continue
			}
			seen[i] = true
			left--
		case <-ctx.Done():
			return 0, fmt.Errorf("%d of %d results not in: %w", left, len(msgs), ctx.Err())
		}
	}
	return last, nil
}

func (b basePub) msg(payload []byte) *nats.Msg { return b.msgTo(BaselineSubject, payload) }

func (b basePub) msgTo(subject string, payload []byte) *nats.Msg {
	if !b.headers {
		return &nats.Msg{Subject: subject, Data: payload}
	}
	// forq's headers as a task of the default options has them.
	m := wire.NewMsg()
	m.Encode(&forq.Task{ID: forq.NewID(), Type: TaskType, MaxAttempts: forq.DefaultMaxAttempts})
	m.Subject, m.Data = subject, payload
	return &m.Msg
}

func (b basePub) one(ctx context.Context, payload []byte) (uint64, error) {
	a, err := b.js.PublishMsg(ctx, b.msg(payload))
	if err != nil {
		return 0, err
	}
	return a.Sequence, nil
}

func (b basePub) batch(payloads [][]byte) any {
	msgs := make([]*nats.Msg, len(payloads))
	for i, p := range payloads {
		subject := BaselineSubject
		if b.queues > 0 {
			_, subject = baselineQueue(QueueName(i % b.queues))
		}
		msgs[i] = b.msgTo(subject, p)
	}
	return msgs
}

func (b basePub) many(ctx context.Context, batch any) (uint64, error) {
	msgs := batch.([]*nats.Msg)
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		f, err := b.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute))
		if err != nil {
			return 0, err
		}
		futures[i] = f
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	var last uint64
	for _, f := range futures {
		select {
		case a := <-f.Ok():
			last = max(last, a.Sequence)
		case err := <-f.Err():
			return 0, err
		}
	}
	return last, nil
}

// RunProducer runs one phase of a producer process on nc.
func RunProducer(ctx context.Context, nc *nats.Conn, o ProducerOptions) (*ProducerResult, error) {
	var pub publisher
	switch o.Mode {
	case ModeForq:
		p, err := producer.New(ctx, nc, producer.Config{})
		if err != nil {
			return nil, err
		}
		pub = forqPub{p: p, queues: o.Queues}
	case ModeBaseline:
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(producer.DefaultWindow))
		if err != nil {
			return nil, err
		}
		pub = basePub{js: js, headers: o.Headers, queues: o.Queues}
	default:
		return nil, fmt.Errorf("bench: unknown mode %q", o.Mode)
	}
	res := &ProducerResult{}
	switch o.Phase {
	case PhaseLatency:
		return res, latency(ctx, nc, pub, o, res)
	case PhaseFill:
		return res, fill(ctx, pub, o, res)
	case PhaseLoad:
		return res, load(ctx, nc, pub, o, res)
	case PhaseEnqueue:
		ps := payloads(o.Single, o.PayloadSize)
		res.StartNs = time.Now().UnixNano()
		cpu := startCPU(o.BrokerPID)
		t0 := time.Now()
		for _, p := range ps {
			seq, err := pub.one(ctx, p)
			if err != nil {
				return nil, fmt.Errorf("enqueue: %w", err)
			}
			res.LastSeq = max(res.LastSeq, seq)
		}
		res.SinglePerSec = float64(len(ps)) / time.Since(t0).Seconds()
		res.Single = cpu.per(len(ps))
		if err := concurrent(ctx, pub, o, res); err != nil {
			return nil, err
		}
		batch := pub.batch(payloads(o.Tasks, o.PayloadSize))
		t0 = time.Now()
		seq, err := pub.many(ctx, batch)
		if err != nil {
			return nil, fmt.Errorf("enqueue batch: %w", err)
		}
		res.BatchPerSec = float64(o.Tasks) / time.Since(t0).Seconds()
		res.LastSeq = max(res.LastSeq, seq)
		return res, nil
	case PhaseE2E:
		batch := pub.batch(payloads(o.Tasks, o.PayloadSize))
		res.StartNs = time.Now().UnixNano()
		t0 := time.Now()
		seq, err := pub.many(ctx, batch)
		if err != nil {
			return nil, fmt.Errorf("enqueue batch: %w", err)
		}
		res.BatchPerSec = float64(o.Tasks) / time.Since(t0).Seconds()
		res.LastSeq = seq
		return res, nil
	case PhaseResults:
		batch := pub.batch(payloads(o.Tasks, o.PayloadSize))
		res.StartNs = time.Now().UnixNano()
		t0 := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		seq, err := pub.recorded(wctx, batch)
		if err != nil {
			return nil, fmt.Errorf("enqueue with results: %w", err)
		}
		res.ResultsPerSec = float64(o.Tasks) / time.Since(t0).Seconds()
		res.LastSeq = seq
		return res, nil
	}
	return nil, fmt.Errorf("bench: unknown phase %q", o.Phase)
}

// concurrent enqueues o.Concurrent tasks one by one from
// ConcurrentProducers goroutines, each waiting for its task's ack before
// it sends the next.
func concurrent(ctx context.Context, pub publisher, o ProducerOptions, res *ProducerResult) error {
	if o.Concurrent <= 0 {
		return nil
	}
	ps := payloads(o.Concurrent, o.PayloadSize)
	seqs := make([]uint64, ConcurrentProducers)
	errs := make([]error, ConcurrentProducers)
	var wg sync.WaitGroup
	cpu := startCPU(o.BrokerPID)
	t0 := time.Now()
	for g := range ConcurrentProducers {
		wg.Go(func() {
			// Goroutine g sends tasks g, g+16, g+32...
			for i := g; i < len(ps); i += ConcurrentProducers {
				seq, err := pub.one(ctx, ps[i])
				if err != nil {
					errs[g] = fmt.Errorf("enqueue (concurrent): %w", err)
					return
				}
				seqs[g] = max(seqs[g], seq)
			}
		})
	}
	wg.Wait()
	res.ConcurrentPerSec = float64(len(ps)) / time.Since(t0).Seconds()
	res.Concurrent = cpu.per(len(ps))
	for g := range seqs {
		res.LastSeq = max(res.LastSeq, seqs[g])
	}
	return errors.Join(errs...)
}

func payloads(n, size int) [][]byte {
	ps := make([][]byte, n)
	for i := range ps {
		ps[i] = Payload(size, 0)
	}
	return ps
}

// latency sends o.Samples probes one at a time, each after the previous
// one's handler started, then o.LoadTasks probes at o.Rate per second.
func latency(ctx context.Context, nc *nats.Conn, pub publisher, o ProducerOptions, res *ProducerResult) error {
	total := o.Samples + o.LoadTasks
	started := make([]int64, total+1)
	sent := make([]int64, total+1)
	got := make(chan uint64, total+1)
	sub, err := nc.Subscribe(ReportSubject, func(m *nats.Msg) {
		if len(m.Data) != 16 {
			return
		}
		p := binary.LittleEndian.Uint64(m.Data[0:8])
		if p == 0 || p > uint64(total) || started[p] != 0 {
			return // a redelivery, or another run's
		}
		started[p] = enqueuedAt(m.Data[8:16])
		got <- p
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }() // the connection closes after anyway
	if err := nc.Flush(); err != nil {
		return err
	}
	payload := make([]byte, max(o.PayloadSize, MinPayload))
	for i := 1; i <= o.Samples; i++ {
		Stamp(payload, uint64(i))
		sent[i] = enqueuedAt(payload)
		if _, err := pub.one(ctx, payload); err != nil {
			return fmt.Errorf("probe %d: %w", i, err)
		}
		if err := waitProbe(ctx, got, uint64(i)); err != nil {
			return err
		}
		res.IdleNs = append(res.IdleNs, started[i]-sent[i])
	}
	interval := time.Duration(float64(time.Second) / o.Rate)
	t0 := time.Now()
	next := t0
	for i := o.Samples + 1; i <= total; i++ {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		Stamp(payload, uint64(i))
		sent[i] = enqueuedAt(payload)
		if _, err := pub.one(ctx, payload); err != nil {
			return fmt.Errorf("probe %d: %w", i, err)
		}
	}
	res.LoadPerSec = float64(o.LoadTasks) / time.Since(t0).Seconds()
	deadline := time.After(30 * time.Second)
	for n := range o.LoadTasks {
		select {
		case <-got:
		case <-deadline:
			return fmt.Errorf("only %d of %d probes under load reported their start", n, o.LoadTasks)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for i := o.Samples + 1; i <= total; i++ {
		res.LoadNs = append(res.LoadNs, started[i]-sent[i])
	}
	return nil
}

func waitProbe(ctx context.Context, got <-chan uint64, want uint64) error {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case p := <-got:
			if p == want {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("probe %d: no worker reported its start within 10s", want)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
