package consumer

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A worker pulls from a queue's consumer with JetStream's pull protocol on
// one subscription it keeps for as long as it runs, rather than with
// jetstream.Consumer.Fetch, which subscribes and unsubscribes for every
// batch and passes each message through a goroutine of its own (and a new
// timer) before the worker sees it. The protocol is the one Fetch speaks:
// a request {"batch": k, "expires": wait} (or {"batch": k, "no_wait": true})
// to $JS.API.CONSUMER.MSG.NEXT, answered by up to k messages and, if fewer
// came, a status message (408 when the request expired, 404 when a no-wait
// one found nothing). Only one request is outstanding at a time, for all
// the worker's queues and priority levels (see priority.go), and it asks
// for no more tasks than the worker has free slots, so a busy worker holds
// no task it cannot start.

// pullSubject is the API subject of pull requests on consumer cons of
// stream.
func pullSubject(stream, cons string) string {
	return jetstream.DefaultAPIPrefix + "CONSUMER.MSG.NEXT." + stream + "." + cons
}

// pullBody is the body of a pull request for k messages waiting at most
// wait; wait 0 makes a no-wait request, which the broker answers at once
// with the messages it has, or with a 404 status if it has none.
func pullBody(buf []byte, k int, wait time.Duration) []byte {
	buf = append(buf[:0], `{"batch":`...)
	buf = strconv.AppendInt(buf, int64(k), 10)
	if wait <= 0 {
		return append(buf, `,"no_wait":true}`...)
	}
	buf = append(buf, `,"expires":`...)
	buf = strconv.AppendInt(buf, wait.Nanoseconds(), 10)
	return append(buf, '}')
}

// pullStatus tells a status message (no payload, a Status header) from a
// task: done is true when it ends the request, err is set for a status
// that is an error (consumer deleted, no JetStream, ...).
func pullStatus(m *nats.Msg) (status, done bool, err error) {
	if len(m.Data) != 0 || m.Reply != "" {
		return false, false, nil
	}
	code := m.Header.Get("Status")
	if code == "" {
		return false, false, nil
	}
	switch code {
	case "100": // idle heartbeat or flow control: not an answer
		return true, false, nil
	case "404", "408": // no messages, request expired
		return true, true, nil
	}
	desc := m.Header.Get("Description")
	if code == "503" {
		desc = "no responders: JetStream not available"
	}
	return true, true, fmt.Errorf("pull request: %s %s", code, desc)
}

// taskMsg is a delivered task: a jetstream.Msg without the per-message
// bookkeeping of jetstream's own.
type taskMsg struct {
	m    *nats.Msg
	nc   *nats.Conn
	ack  *acker // final acks go through it when set
	ackd atomic.Bool
}

var (
	ackAck      = []byte("+ACK")
	ackNak      = []byte("-NAK")
	ackProgress = []byte("+WPI")
	ackTerm     = []byte("+TERM")
)

func (t *taskMsg) Data() []byte         { return t.m.Data }
func (t *taskMsg) Headers() nats.Header { return t.m.Header }
func (t *taskMsg) Subject() string      { return t.m.Subject }
func (t *taskMsg) Reply() string        { return t.m.Reply }

func (t *taskMsg) Ack() error        { return t.reply(ackAck, true) }
func (t *taskMsg) Nak() error        { return t.reply(ackNak, true) }
func (t *taskMsg) InProgress() error { return t.reply(ackProgress, false) }
func (t *taskMsg) Term() error       { return t.reply(ackTerm, true) }

func (t *taskMsg) NakWithDelay(d time.Duration) error {
	if d <= 0 {
		return t.Nak()
	}
	return t.reply(fmt.Appendf(nil, `-NAK {"delay": %d}`, d.Nanoseconds()), true)
}

func (t *taskMsg) TermWithReason(reason string) error {
	if reason == "" {
		return t.Term()
	}
	return t.reply([]byte("+TERM "+reason), true)
}

func (t *taskMsg) DoubleAck(ctx context.Context) error {
	if t.m.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	if t.ackd.Load() {
		return jetstream.ErrMsgAlreadyAckd
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	if _, err := t.nc.RequestWithContext(ctx, t.m.Reply, ackAck); err != nil {
		return err
	}
	t.ackd.Store(true)
	if t.ack != nil {
		t.ack.acked()
	}
	return nil
}

// reply sends an acknowledgement; final ones (all but +WPI) are sent once.
func (t *taskMsg) reply(body []byte, final bool) error {
	if t.m.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	if t.ackd.Load() {
		return jetstream.ErrMsgAlreadyAckd
	}
	var err error
	if final && t.ack != nil {
		err = t.ack.send(t.m.Reply, body)
	} else {
		err = t.nc.Publish(t.m.Reply, body)
	}
	if err != nil {
		return err
	}
	if final {
		t.ackd.Store(true)
	}
	return nil
}

// Metadata parses the ack subject, as jetstream's Msg does.
func (t *taskMsg) Metadata() (*jetstream.MsgMetadata, error) {
	tok, ok := ackTokens(t.m.Reply)
	if !ok {
		return nil, fmt.Errorf("%w: %q", jetstream.ErrNotJSMessage, t.m.Reply)
	}
	md := &jetstream.MsgMetadata{
		Domain:       tok[0],
		Stream:       tok[2],
		Consumer:     tok[3],
		NumDelivered: parseNum(tok[4]),
		NumPending:   parseNum(tok[8]),
		Timestamp:    time.Unix(0, int64(parseNum(tok[7]))),
	}
	md.Sequence.Stream = parseNum(tok[5])
	md.Sequence.Consumer = parseNum(tok[6])
	return md, nil
}

// ackTokens splits an ack subject into domain, account hash, stream,
// consumer, delivered, stream seq, consumer seq, timestamp and pending:
// $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending> or
// $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>].
func ackTokens(s string) (tok [9]string, ok bool) {
	rest, found := strings.CutPrefix(s, "$JS.ACK.")
	if !found {
		return tok, false
	}
	n := strings.Count(rest, ".") + 1
	i := 0
	switch {
	case n == 7:
		i = 2
	case n >= 9:
	default:
		return tok, false
	}
	for ; i < len(tok); i++ {
		tok[i], rest, _ = strings.Cut(rest, ".")
	}
	if tok[0] == "_" {
		tok[0] = ""
	}
	return tok, true
}

// numDelivered reads the delivery count of an ack subject without
// allocating.
func numDelivered(s string) (uint64, bool) {
	tok, ok := ackTokens(s)
	if !ok {
		return 0, false
	}
	return parseNum(tok[4]), true
}

func parseNum(d string) (n uint64) {
	for i := 0; i < len(d); i++ {
		c := d[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
