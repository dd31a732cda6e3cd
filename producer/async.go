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
	"github.com/nats-io/nats.go/jetstream"
)

// Asynchronous publishing for EnqueueMany.
//
// jetstream.PublishMsgAsync keeps a future per message: a map entry under
// a lock, two channels, a JSON decode of each ack into a struct by
// reflection. For a batch of small tasks that was a third of the
// producer's CPU. EnqueueMany knows its batch, so it needs less: each
// message's reply subject is a per-batch inbox and the task's index in the
// batch, one subscription takes every ack, and the ack is read with a
// small parser (the broker's PubAck is {"stream":..,"seq":N} with
// "duplicate": true on a duplicate, or an "error" object).

// ErrNoAck is the error of a task whose enqueue the broker did not
// acknowledge within the producer's AckTimeout. It may have been stored:
// enqueueing the same task again (same ID) is safe, as the broker drops a
// duplicate ID within its duplicate window.
var ErrNoAck = errors.New("no acknowledgement from the broker")

// DefaultAckTimeout is how long EnqueueMany waits for an acknowledgement
// when none comes at all.
const DefaultAckTimeout = 30 * time.Second

// pubAck is a broker's answer to one publish.
type pubAck struct {
	seq uint64
	dup bool
	err error
}

// parsePubAck reads a PubAck: {"stream":"S","seq":N} with "duplicate": true
// for a duplicate and "domain" on a domain, or {"error":{...}}. A status
// message (no responders) has no data and a Status header.
func parsePubAck(m *nats.Msg) pubAck {
	if len(m.Data) == 0 {
		if st := m.Header.Get("Status"); st == "503" {
			return pubAck{err: fmt.Errorf("%w: no stream takes this subject (is JetStream enabled?)", nats.ErrNoResponders)}
		} else if st != "" {
			return pubAck{err: fmt.Errorf("broker answered %s %s", st, m.Header.Get("Description"))}
		}
		return pubAck{err: errors.New("empty acknowledgement")}
	}
	b := m.Data
	if bytes.Contains(b, []byte(`"error"`)) {
		var e struct {
			Error *struct {
				Code        int    `json:"code"`
				ErrCode     int    `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err == nil && e.Error != nil {
			return pubAck{err: refusal{&jetstream.APIError{Code: e.Error.Code, ErrorCode: jetstream.ErrorCode(e.Error.ErrCode), Description: e.Error.Description}}}
		}
	}
	i := bytes.Index(b, []byte(`"seq":`))
	if i < 0 {
		return pubAck{err: fmt.Errorf("malformed acknowledgement %q", b)}
	}
	var a pubAck
	j := i + len(`"seq":`)
	for j < len(b) && b[j] == ' ' {
		j++
	}
	start := j
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		a.seq = a.seq*10 + uint64(b[j]-'0')
	}
	if j == start {
		return pubAck{err: fmt.Errorf("malformed acknowledgement %q", b)}
	}
	// The broker writes `"duplicate": true`, with a space.
	if k := bytes.Index(b, []byte(`"duplicate":`)); k >= 0 {
		a.dup = bytes.HasPrefix(bytes.TrimLeft(b[k+len(`"duplicate":`):], " "), []byte("true"))
	}
	return a
}

// refusal is the error of a publish the broker refused; it unwraps to the
// broker's error (kvcas.IsConflict reads its code).
type refusal struct{ api *jetstream.APIError }

func (r refusal) Error() string {
	return fmt.Sprintf("broker refused the task: %s (code %d, error %d)", r.api.Description, r.api.Code, r.api.ErrorCode)
}

func (r refusal) Unwrap() error { return r.api }

// batchPub publishes one batch and collects its acks.
type batchPub struct {
	prefix  string // the batch's inbox, with a trailing '.'
	window  chan struct{}
	timeout time.Duration

	mu    sync.Mutex
	acks  []pubAck
	got   []bool        // acks[i] is decided
	sent  []bool        // message i was published
	moved chan struct{} // a token when an ack came
}

// publishBatch publishes the messages build returns for 0..n-1 (nil: no
// message for that index) with at most window unacknowledged at once, and
// returns each one's ack. A message build returns is published before
// build is called again, so build may reuse it. When ctx ends the
// messages not yet acknowledged get its error; when no ack has come for
// timeout, those published get ErrNoAck.
func publishBatch(ctx context.Context, nc *nats.Conn, n int, build func(i int) (*nats.Msg, error), window int, timeout time.Duration) ([]pubAck, error) {
	b := &batchPub{
		prefix: nc.NewInbox() + ".", window: make(chan struct{}, window), timeout: timeout,
		acks: make([]pubAck, n), got: make([]bool, n), sent: make([]bool, n),
		moved: make(chan struct{}, 1),
	}
	sub, err := nc.Subscribe(b.prefix+"*", b.onAck)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	// The window bounds how many acks can be pending, not the
	// subscription's default limit (64k messages).
	_ = sub.SetPendingLimits(-1, -1)
	var reply []byte
	for i := range n {
		m, err := build(i)
		if m == nil {
			b.mu.Lock()
			b.got[i] = true
			if err != nil {
				b.acks[i] = pubAck{err: err}
			}
			b.mu.Unlock()
			continue
		}
		if !b.acquire(ctx) {
			break
		}
		reply = strconv.AppendInt(append(reply[:0], b.prefix...), int64(i), 10)
		m.Reply = string(reply)
		b.mu.Lock()
		b.sent[i] = true
		b.mu.Unlock()
		if err := nc.PublishMsg(m); err != nil {
			b.decide(i, pubAck{err: err})
		}
	}
	b.wait(ctx)
	// Stop taking acks before deciding the rest.
	_ = sub.Unsubscribe()
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.acks {
		if b.got[i] {
			continue
		}
		if ctx.Err() != nil {
			b.acks[i] = pubAck{err: ctx.Err()}
		} else {
			b.acks[i] = pubAck{err: fmt.Errorf("%w within %s", ErrNoAck, b.timeout)}
		}
	}
	return b.acks, nil
}

// acquire takes a place in the window. When no ack has come for a whole
// timeout, the outstanding messages get ErrNoAck and free theirs.
func (b *batchPub) acquire(ctx context.Context) bool {
	select {
	case b.window <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(b.timeout)
	defer t.Stop()
	for {
		select {
		case b.window <- struct{}{}:
			return true
		case <-ctx.Done():
			return false
		case <-b.moved:
			t.Reset(b.timeout)
		case <-t.C:
			b.expire()
			t.Reset(b.timeout)
		}
	}
}

func (b *batchPub) onAck(m *nats.Msg) {
	i, err := strconv.Atoi(strings.TrimPrefix(m.Subject, b.prefix))
	if err != nil || i < 0 || i >= len(b.acks) {
		return
	}
	b.decide(i, parsePubAck(m))
	select {
	case b.moved <- struct{}{}:
	default:
	}
}

// decide records the ack of published message i and frees its place in
// the window, unless it was decided already.
func (b *batchPub) decide(i int, a pubAck) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.got[i] || !b.sent[i] {
		return
	}
	b.got[i] = true
	b.acks[i] = a
	<-b.window
}

// expire gives ErrNoAck to every message published and not acknowledged.
func (b *batchPub) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.acks {
		if b.sent[i] && !b.got[i] {
			b.got[i] = true
			b.acks[i] = pubAck{err: fmt.Errorf("%w within %s", ErrNoAck, b.timeout)}
			<-b.window
		}
	}
}

// wait waits until every published message is decided, ctx ends, or no
// ack has come for a timeout.
func (b *batchPub) wait(ctx context.Context) {
	t := time.NewTimer(b.timeout)
	defer t.Stop()
	for len(b.window) > 0 {
		select {
		case <-b.moved:
			t.Reset(b.timeout)
		case <-ctx.Done():
			return
		case <-t.C:
			return
		}
	}
}
