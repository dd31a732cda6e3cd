package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Phases of a producer process for the growth figures.
const (
	// PhaseFill enqueues Tasks into a paused queue in batches of
	// FillChunk, building each batch before its clock starts, so the
	// producer's memory stays that of one batch however many tasks it
	// enqueues.
	PhaseFill = "fill"
	// PhaseLoad sends LoadTasks latency probes at Rate per second, each
	// moment's due tasks as one batch, without waiting for one task's
	// ack before the next is due: a load one synchronous Enqueue at a
	// time could not offer.
	PhaseLoad = "load"
)

// FillChunk is the batch size of PhaseFill.
const FillChunk = 10_000

// fill enqueues o.Tasks tasks in batches of FillChunk. res.BatchPerSec
// counts only the time in the batch calls.
func fill(ctx context.Context, pub publisher, o ProducerOptions, res *ProducerResult) error {
	var busy time.Duration
	res.StartNs = time.Now().UnixNano()
	for done := 0; done < o.Tasks; {
		n := min(FillChunk, o.Tasks-done)
		batch := pub.batch(payloads(n, o.PayloadSize))
		t0 := time.Now()
		seq, err := pub.many(ctx, batch)
		if err != nil {
			return fmt.Errorf("fill, after %d tasks: %w", done, err)
		}
		busy += time.Since(t0)
		res.LastSeq = max(res.LastSeq, seq)
		done += n
	}
	res.BatchPerSec = float64(o.Tasks) / busy.Seconds()
	return nil
}

// maxLoadBatch bounds the batch PhaseLoad sends at once when it has
// fallen behind its schedule.
const maxLoadBatch = 256

// load sends o.LoadTasks probes at o.Rate per second: at each moment the
// tasks due by then, stamped just before their batch is published. The
// latency of a probe is from its stamp to its handler's start, so it
// includes the wait for the rest of its batch's acks.
func load(ctx context.Context, nc *nats.Conn, pub publisher, o ProducerOptions, res *ProducerResult) error {
	total := o.LoadTasks
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
	t0 := time.Now()
	res.StartNs = t0.UnixNano()
	next := 1 // the next probe to send
	for next <= total {
		due := min(int(time.Since(t0).Seconds()*o.Rate)+1, total) // probes due by now
		if due < next {
			at := t0.Add(time.Duration(float64(next-1) / o.Rate * float64(time.Second)))
			time.Sleep(time.Until(at))
			continue
		}
		n := min(due-next+1, maxLoadBatch)
		ps := make([][]byte, n)
		for i := range ps {
			ps[i] = Payload(o.PayloadSize, uint64(next+i))
			sent[next+i] = enqueuedAt(ps[i])
		}
		seq, err := pub.many(ctx, pub.batch(ps))
		if err != nil {
			return fmt.Errorf("probes %d-%d: %w", next, next+n-1, err)
		}
		res.LastSeq = max(res.LastSeq, seq)
		next += n
	}
	res.LoadPerSec = float64(total) / time.Since(t0).Seconds()
	deadline := time.After(30 * time.Second)
	for n := range total {
		select {
		case <-got:
		case <-deadline:
			return fmt.Errorf("only %d of %d probes under load reported their start", n, total)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for i := 1; i <= total; i++ {
		res.LoadNs = append(res.LoadNs, started[i]-sent[i])
	}
	return nil
}
