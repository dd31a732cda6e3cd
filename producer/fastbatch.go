package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// Fast batch publishing for EnqueueMany.
//
// A JetStream stream that allows batched publishing (allow_batched, NATS
// 2.14 and later) takes a run of messages from one publisher as one
// flow-controlled batch: the broker stores each message as it comes, as
// for any publish, but answers only every few hundred messages with a flow
// acknowledgement ("the messages up to N are stored"), and the commit at
// the end with one PubAck giving the stream sequence of the last message
// and the count. The broker then sends a handful of acknowledgements for a
// batch of thousands instead of one per task, and the producer decodes a
// handful; each message is still de-duplicated by its Nats-Msg-Id.
//
// A batch is named in each message's reply subject:
// <inbox>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI, where flow is how
// many messages the publisher asks to send between flow acknowledgements,
// "fail" ends the batch at the first message the stream refuses, and op is
// 0 for the first message, 1 for the next ones and 3 for the empty
// end-of-batch message that commits it.

// Batch operations in a fast batch's reply subject.
const (
	fastOpStart     = 0
	fastOpAppend    = 1
	fastOpCommitEOB = 3
)

// fastFlow is how many messages the producer asks to send between two of
// the broker's flow acknowledgements (the broker caps it at 500).
const fastFlow = 500

// Error codes the broker refuses a whole fast batch with before storing
// anything: batching disabled on the stream, or too many batches in
// flight. EnqueueMany then publishes the tasks one by one instead.
const (
	errCodeBatchDisabled = 10205
	errCodeBatchInflight = 10211
)

// errCodeBatchUnknown is the broker's answer to a message of a batch it
// does not know (any more): it restarted, or dropped the batch after its
// timeout. No commit will come for it.
const errCodeBatchUnknown = 10208

// errBatchRefused is the fast batch's result when the broker refused the
// batch as a whole and stored nothing.
var errBatchRefused = errors.New("the broker refused the batch")

// fastReply is one of the broker's answers to a fast batch.
type fastReply struct {
	kind  string // "ack", "gap", "err", or "" for the final PubAck
	seq   uint64 // batch sequence (ack, err), or stream sequence (PubAck)
	count uint64 // PubAck: messages of the batch committed
	err   error
}

// parseFastReply reads a fast batch answer: {"type":"ack","seq":N,"msgs":M},
// {"type":"gap",...}, {"type":"err","seq":N,"error":{...}}, or the final
// PubAck {"stream":S,"seq":N,"batch":ID,"count":C} or {"error":{...}}.
func parseFastReply(m *nats.Msg) fastReply {
	if len(m.Data) == 0 {
		a := parsePubAck(m) // a status: no responders
		return fastReply{err: a.err}
	}
	var r struct {
		Type  string `json:"type"`
		Seq   uint64 `json:"seq"`
		Count uint64 `json:"count"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return fastReply{err: fmt.Errorf("malformed acknowledgement %q", m.Data)}
	}
	f := fastReply{kind: r.Type, seq: r.Seq, count: r.Count}
	if r.Error != nil {
		f.err = &brokerError{code: r.Error.Code, errCode: r.Error.ErrCode, desc: r.Error.Description}
	} else if f.kind == "" && !bytes.Contains(m.Data, []byte(`"seq"`)) {
		f.err = fmt.Errorf("malformed acknowledgement %q", m.Data)
	}
	return f
}

// brokerError is an error the broker answered a publish with.
type brokerError struct {
	code, errCode int
	desc          string
}

func (e *brokerError) Error() string {
	return fmt.Sprintf("broker refused the task: %s (code %d, error %d)", e.desc, e.code, e.errCode)
}

// errCode returns the broker's error code in err, or 0.
func errCode(err error) int {
	var be *brokerError
	if errors.As(err, &be) {
		return be.errCode
	}
	return 0
}

// fastBatch is the state of one fast batch being published.
type fastBatch struct {
	mu      sync.Mutex
	acked   uint64 // the messages up to here are stored
	failed  uint64 // the first message the broker refused, if any
	failErr error
	done    bool // the final PubAck came
	lost    bool // the broker no longer knows the batch
	final   fastReply
	moved   chan struct{} // a token when an answer came
}

// replySeq returns the batch sequence in a fast batch reply subject
// <inbox>.<batch id>.<flow>.fail.<seq>.<op>.$FI, or 0.
func replySeq(subject string) uint64 {
	t := strings.Split(subject, ".")
	if len(t) < 3 {
		return 0
	}
	n, _ := strconv.ParseUint(t[len(t)-3], 10, 64)
	return n
}

func (b *fastBatch) onReply(m *nats.Msg) {
	r := parseFastReply(m)
	b.mu.Lock()
	switch {
	case b.done:
	case r.kind == "ack":
		b.acked = max(b.acked, r.seq)
	case r.kind == "err":
		b.fail(r.seq, r.err)
	case r.kind == "" && r.err != nil:
		// An error in the PubAck form answers the message whose reply
		// subject it came to: one the broker refused before it reached
		// the batch (too large, say), or the batch's first.
		b.fail(replySeq(m.Subject), r.err)
		b.lost = b.lost || errCode(r.err) == errCodeBatchUnknown
	case r.kind == "":
		b.done, b.final = true, r
		b.acked = max(b.acked, r.count)
	}
	b.mu.Unlock()
	select {
	case b.moved <- struct{}{}:
	default:
	}
}

// fail records that the broker refused message seq; the first refusal is
// the one that ended the batch.
func (b *fastBatch) fail(seq uint64, err error) {
	if seq != 0 && (b.failed == 0 || seq < b.failed) {
		b.failed, b.failErr = seq, err
	}
}

// over reports whether nothing more will come: the final PubAck came, the
// first message was refused (there is no batch to commit then), or the
// broker lost the batch.
func (b *fastBatch) over() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done || b.failed == 1 || b.lost
}

// stopped reports whether the broker ended the batch.
func (b *fastBatch) stopped() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done || b.failed != 0 || b.lost
}

// publishFastBatch publishes the messages build returns for 0..n-1 (nil:
// no message for that index) as one fast batch, at most window of them
// beyond the broker's last flow acknowledgement, and returns each one's
// outcome. Only the last stored message learns its stream sequence.
//
// The result is errBatchRefused when the broker refused the batch before
// storing any of it (batching turned off on the stream, too many batches
// in flight): the caller publishes the messages another way.
func publishFastBatch(ctx context.Context, nc *nats.Conn, n int, build func(i int) (*nats.Msg, error), window int, timeout time.Duration) ([]pubAck, error) {
	b := &fastBatch{moved: make(chan struct{}, 1)}
	inbox := nc.NewInbox()
	sub, err := nc.Subscribe(inbox+".>", b.onReply)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)

	// The broker acks at least every flow messages, so that a window
	// smaller than fastFlow is not left waiting for an ack.
	flow := max(1, min(fastFlow, window/2))
	p := fastPublisher{
		nc:       nc,
		b:        b,
		prefix:   inbox + "." + nuid.Next() + "." + strconv.Itoa(flow) + ".fail.",
		window:   window,
		timeout:  timeout,
		lastMove: time.Now(),
	}
	acks := make([]pubAck, n)
	bseq := make([]uint64, n) // each index's batch sequence; 0: not published
	p.publishAll(ctx, n, build, acks, bseq)
	if p.k == 0 {
		return acks, p.pubErr
	}
	p.commit(ctx)
	_ = sub.Unsubscribe()

	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.refusedWhole(); err != nil {
		return nil, err
	}
	b.outcomes(ctx, acks, bseq, p.pubErr, timeout)
	return acks, nil
}

// fastPublisher is the sending side of one fast batch. It lives for one
// publishFastBatch call and reuses its reply buffer for every message.
type fastPublisher struct {
	nc       *nats.Conn
	b        *fastBatch
	prefix   string // each reply subject up to the batch sequence
	window   int
	timeout  time.Duration
	reply    []byte
	k        uint64 // batch sequence of the last message published
	subject  string // subject of the last message published
	stopped  bool   // ctx ended, the broker ended the batch, or went silent
	pubErr   error  // the publish that failed, which stopped the batch
	lastMove time.Time
}

// publishAll publishes the messages build returns for 0..n-1, recording in
// acks the error of each one it could not build or publish and in bseq the
// batch sequence of each one it published.
func (p *fastPublisher) publishAll(ctx context.Context, n int, build func(i int) (*nats.Msg, error), acks []pubAck, bseq []uint64) {
	for i := range n {
		m, err := build(i)
		if m == nil {
			if err != nil {
				acks[i] = pubAck{err: err}
			}
			continue
		}
		if !p.waitRoom(ctx) {
			acks[i] = pubAck{err: errors.New("not published: the batch ended before this task")}
			continue
		}
		if bseq[i], err = p.publish(m); err != nil {
			acks[i] = pubAck{err: err}
		}
	}
}

// waitRoom waits until the batch may take one more message: at most
// window beyond the last flow ack. It reports false, and the batch is
// stopped from then on, when the broker ended the batch, ctx ended or the
// broker went silent for the timeout.
func (p *fastPublisher) waitRoom(ctx context.Context) bool {
	for !p.stopped {
		if p.b.room(p.k, p.window) {
			return true
		}
		if p.b.stopped() {
			p.stopped = true
			break
		}
		p.stopped = !p.b.waitMove(ctx, &p.lastMove, p.timeout)
	}
	return false
}

// publish sends m as the batch's next message and returns its batch
// sequence. A failed publish stops the batch; its sequence is then 0.
func (p *fastPublisher) publish(m *nats.Msg) (uint64, error) {
	p.k++
	op := fastOpAppend
	if p.k == 1 {
		op = fastOpStart
	}
	p.reply = append(append(strconv.AppendUint(append(p.reply[:0], p.prefix...), p.k, 10), '.'), byte('0'+op))
	p.reply = append(p.reply, ".$FI"...)
	m.Reply, p.subject = string(p.reply), m.Subject
	if err := p.nc.PublishMsg(m); err != nil {
		p.pubErr, p.stopped = err, true
		p.k--
		return 0, err
	}
	return p.k, nil
}

// commit ends the batch with an empty end-of-batch message, which is not
// stored, and waits for the broker's last answers. It is sent after a
// refusal too: a message refused before it reached the batch leaves a
// gap, which the broker finds at the next message and commits the batch
// up to it.
func (p *fastPublisher) commit(ctx context.Context) {
	if p.pubErr == nil && !p.b.over() && ctx.Err() == nil {
		eob := &nats.Msg{Subject: p.subject}
		eob.Reply = p.prefix + strconv.FormatUint(p.k+1, 10) + "." + strconv.Itoa(fastOpCommitEOB) + ".$FI"
		p.pubErr = p.nc.PublishMsg(eob)
	}
	for p.pubErr == nil && !p.b.over() && p.b.waitMove(ctx, &p.lastMove, p.timeout) {
	}
}

// room reports whether the broker has not ended the batch and the message
// after batch sequence k is within window of its last flow ack.
func (b *fastBatch) room(k uint64, window int) bool {
	b.mu.Lock()
	ok := k-b.acked < uint64(window) && b.failed == 0 && !b.done
	b.mu.Unlock()
	return ok
}

// refusedWhole returns errBatchRefused when the broker refused the batch
// at its first message for a reason of the batch as a whole and stored
// nothing, or nil. b.mu is held.
func (b *fastBatch) refusedWhole() error {
	if b.failed != 1 || b.acked != 0 {
		return nil
	}
	switch errCode(b.failErr) {
	case errCodeBatchDisabled, errCodeBatchInflight:
		return fmt.Errorf("%w: %w", errBatchRefused, b.failErr)
	}
	return nil
}

// outcomes sets in acks the outcome of each message published, by its
// batch sequence in bseq, from the broker's answers; pubErr is the publish
// that failed, if one did. b.mu is held.
func (b *fastBatch) outcomes(ctx context.Context, acks []pubAck, bseq []uint64, pubErr error, timeout time.Duration) {
	notStored := errors.New("not stored: the broker stopped the batch at an earlier task")
	if b.failed != 0 {
		notStored = fmt.Errorf("not stored: the broker stopped the batch at an earlier task's error: %w", b.failErr)
	}
	// With "fail" the broker stores a batch's messages in order and stops
	// at the first it refuses: a flow ack or the commit's count says how
	// far it got.
	for i, s := range bseq {
		switch {
		case s == 0:
		case s <= b.acked:
			if b.done && s == b.final.count {
				acks[i] = pubAck{seq: b.final.seq}
			}
		case s == b.failed:
			acks[i] = pubAck{err: b.failErr}
		case b.done || b.failed == 1 || b.lost && s > b.failed:
			acks[i] = pubAck{err: notStored}
		case b.lost:
			acks[i] = pubAck{err: fmt.Errorf("%w: the broker lost the batch (did it restart?)", ErrNoAck)}
		case ctx.Err() != nil:
			acks[i] = pubAck{err: ctx.Err()}
		case pubErr != nil:
			acks[i] = pubAck{err: pubErr}
		default:
			acks[i] = pubAck{err: fmt.Errorf("%w within %s", ErrNoAck, timeout)}
		}
	}
}

// waitMove waits for an answer from the broker. It reports false when ctx
// ended or no answer has come for timeout since the last one.
func (b *fastBatch) waitMove(ctx context.Context, last *time.Time, timeout time.Duration) bool {
	left := timeout - time.Since(*last)
	if left <= 0 {
		return false
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-b.moved:
		*last = time.Now()
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
}
