package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Riding out a broker restart.
//
// A publish whose request reached a broker that then stopped is never
// answered: a stopping broker shuts JetStream down before it closes its
// clients' connections, and a killed one answers nothing, so the reply the
// client waits for does not come even after it reconnects, and Enqueue
// would wait until its context ends. So Enqueue's publishes in flight are
// cut off when the connection drops (connWatch), and the same message is
// published again when it was cut off that way or found no JetStream to
// answer (a broker still starting): the task's ID is its Nats-Msg-Id, so a
// second publish inside the stream's duplicate window stores nothing new.
// It gives up when its context ends, or before the duplicate window since
// the first try has passed (after that a second publish could store the
// task twice).

// errConnDropped is the error of a publish cut off by a connection drop.
var errConnDropped = errors.New("connection to the broker dropped while the publish waited for its answer")

// connWatch cuts off the publishes in flight when the connection drops,
// and gives waiters a channel that the next drop closes. Its goroutine
// lives as long as the connection: it returns when the connection is
// closed.
type connWatch struct {
	mu    sync.Mutex
	calls call          // sentinel of the ring of publishes in flight
	drop  chan struct{} // closed at the next drop
}

// call is one publish in flight.
type call struct {
	cancel     context.CancelFunc
	dropped    bool // set, under connWatch.mu, before cancel
	prev, next *call
}

func watchConn(nc *nats.Conn) *connWatch {
	w := &connWatch{drop: make(chan struct{})}
	w.calls.prev, w.calls.next = &w.calls, &w.calls
	ch := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	go func() {
		defer nc.RemoveStatusListener(ch)
		for s := range ch {
			w.dropped()
			if s == nats.CLOSED {
				return
			}
		}
	}()
	if nc.IsClosed() {
		// Closed before the listener was registered: nothing will come.
		nc.RemoveStatusListener(ch)
	}
	return w
}

// dropped cuts off every publish in flight and wakes the waiters.
func (w *connWatch) dropped() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := w.calls.next; c != &w.calls; c = c.next {
		c.dropped = true
		c.cancel()
	}
	close(w.drop)
	w.drop = make(chan struct{})
}

// dropCh returns a channel that the connection's next drop closes.
func (w *connWatch) dropCh() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.drop
}

func (w *connWatch) add(c *call) {
	w.mu.Lock()
	c.prev, c.next = &w.calls, w.calls.next
	w.calls.next.prev = c
	w.calls.next = c
	w.mu.Unlock()
}

// remove takes c out and reports whether a drop cut it off.
func (w *connWatch) remove(c *call) bool {
	w.mu.Lock()
	c.prev.next, c.next.prev = c.next, c.prev
	d := c.dropped
	w.mu.Unlock()
	return d
}

// retryable reports whether a publish that failed with err may be sent
// again: it was cut off by a connection drop, or no JetStream answered (a
// broker still starting). A publish that got no answer on a live
// connection is not sent again: a broker that is up and answers nothing
// (its disk full) is reported (see storageCheck), not waited on.
func retryable(err error) bool {
	return errors.Is(err, errConnDropped) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected)
}

// publish publishes m and waits for the stream's answer, publishing it
// again while the broker cannot answer (see above), until ctx ends or the
// duplicate window since the first try is nearly over. An attempt without
// a deadline from ctx waits at most the JetStream client's default
// timeout, as a plain publish would (and costs no more: that is the
// context a plain publish makes).
func (p *Producer) publish(ctx context.Context, m *nats.Msg) (pubAck, error) {
	first := time.Now()
	wait := 50 * time.Millisecond
	for {
		var actx context.Context
		c := &call{}
		if _, ok := ctx.Deadline(); ok {
			actx, c.cancel = context.WithCancel(ctx)
		} else {
			actx, c.cancel = context.WithTimeout(ctx, p.apiTimeout)
		}
		p.conn.add(c)
		ack, err := request(actx, p.nc, m)
		if p.conn.remove(c) && err != nil && ctx.Err() == nil {
			err = errConnDropped
		}
		c.cancel()
		if err == nil || ctx.Err() != nil || !retryable(err) || time.Since(first)+wait >= p.retryWindow {
			return ack, err
		}
		if !errors.Is(err, errConnDropped) {
			// The broker is there but its JetStream is not (yet): wait
			// a little. After a drop the publish waits in the
			// connection's buffer until it reconnects, so no pause.
			if !sleep(ctx, wait) {
				return ack, err
			}
			wait = min(2*wait, time.Second)
		}
	}
}

// request publishes m and waits for the stream's answer: what
// jetstream.PublishMsg does, with the same errors, but for its own retry
// of a publish no stream answered (publish retries it) and its JSON
// decoding of an acknowledgement, which parsePubAck reads instead. An
// answer that is an error is decoded as PublishMsg decodes it, into a
// *jetstream.APIError.
func request(ctx context.Context, nc *nats.Conn, m *nats.Msg) (pubAck, error) {
	resp, err := nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return pubAck{}, jetstream.ErrNoStreamResponse
		}
		return pubAck{}, err
	}
	if bytes.Contains(resp.Data, []byte(`"error"`)) {
		var e struct {
			Error *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(resp.Data, &e); err == nil && e.Error != nil {
			return pubAck{}, fmt.Errorf("nats: %w", e.Error)
		}
	}
	if !bytes.Contains(resp.Data, []byte(`"stream":`)) {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	a := parsePubAck(resp)
	if a.err != nil {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	return a, nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// watchAgain reports whether a watch that could not be set up with err
// is worth setting up again: the broker is away or not ready and ctx
// lives. It waits a little first.
func (p *Producer) watchAgain(ctx context.Context, err error) bool {
	if ctx.Err() != nil || p.nc.IsClosed() {
		return false
	}
	if !retryable(err) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) && !p.nc.IsReconnecting() {
		return false
	}
	return sleep(ctx, 100*time.Millisecond)
}
