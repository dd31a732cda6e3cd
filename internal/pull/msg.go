package pull

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Msg is a delivered task: its message as the broker sent it, and the
// acknowledgements a worker sends for it. It is a jetstream.Msg without the
// per-message bookkeeping of jetstream's own (a goroutine hop, a timer);
// its final acknowledgement (ack, nak) is sent once, through the engine's
// Acker when it has one.
type Msg struct {
	m    *nats.Msg
	nc   *nats.Conn
	ack  *Acker // final acks go through it when set
	ackd atomic.Bool
}

var (
	ackAck      = []byte("+ACK")
	ackNak      = []byte("-NAK")
	ackProgress = []byte("+WPI")
)

// HandBackDelay is the delay of the nak that hands a task back (HandBack):
// short enough to be redelivered at once, and a delay at all so that the
// broker writes it down, and after a restart of its own redelivers the
// task at once rather than after an ack wait.
const HandBackDelay = time.Millisecond

// Data returns the message's body: the task's payload.
func (t *Msg) Data() []byte { return t.m.Data }

// Headers returns the message's headers.
func (t *Msg) Headers() nats.Header { return t.m.Header }

// Reply returns the message's ack subject, which names its stream
// sequence and delivery count.
func (t *Msg) Reply() string { return t.m.Reply }

// Ack tells the broker the task is done: it leaves the stream. It fails
// with jetstream.ErrMsgAlreadyAckd after another final acknowledgement.
func (t *Msg) Ack() error { return t.reply(ackAck, true) }

// Nak hands the task back for redelivery at once.
func (t *Msg) Nak() error { return t.reply(ackNak, true) }

// NakWithDelay hands the task back for redelivery after d; d <= 0 is Nak.
func (t *Msg) NakWithDelay(d time.Duration) error {
	if d <= 0 {
		return t.Nak()
	}
	return t.reply(fmt.Appendf(nil, `-NAK {"delay": %d}`, d.Nanoseconds()), true)
}

// HandBack hands the task back for immediate redelivery in a way that
// survives a broker restart: a nak with HandBackDelay.
func (t *Msg) HandBack() error { return t.NakWithDelay(HandBackDelay) }

// InProgress tells the broker the task is still being worked on (+WPI):
// its ack wait starts again. It is not final: it may be sent any number of
// times before the final acknowledgement, and fails after it.
func (t *Msg) InProgress() error { return t.reply(ackProgress, false) }

// Heartbeat is InProgress sent as a request: the broker answers on reply
// (an empty message) once it has processed it, which confirms the lease
// as of the send.
func (t *Msg) Heartbeat(reply string) error {
	if t.m.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	return t.nc.PublishRequest(t.m.Reply, reply, ackProgress)
}

// reply sends an acknowledgement; final ones (all but +WPI) are sent once.
func (t *Msg) reply(body []byte, final bool) error {
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
