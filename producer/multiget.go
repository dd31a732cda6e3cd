package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// multiGet is the most keys one batched read asks for: the broker answers
// at most 1,024 messages to one.
const multiGet = 1024

// errNoMultiGet: the broker does not answer batched direct reads of the
// bucket (its stream does not allow direct gets, or the client may not
// ask: see firstAnswer).
var errNoMultiGet = errors.New("no batched direct get")

// lastValues reads the current value of each of keys in the KV bucket
// with the broker's batched direct get (NATS 2.11 and later: one request
// per multiGet keys, not one per key) and passes each key that has one to
// send, until send returns false. It returns errNoMultiGet when the
// broker does not serve such reads, before send is called.
func lastValues(ctx context.Context, nc *nats.Conn, bucket string, keys []string, send func(jetstream.KeyValueEntry) bool) error {
	prefix := "$KV." + bucket + "."
	subject := "$JS.API.DIRECT.GET.KV_" + bucket
	subjects := make([]string, 0, min(len(keys), multiGet))
	for len(keys) > 0 {
		n := min(len(keys), multiGet)
		subjects = subjects[:0]
		for _, k := range keys[:n] {
			subjects = append(subjects, prefix+k)
		}
		keys = keys[n:]
		if err := lastValuesOnce(ctx, nc, subject, prefix, bucket, subjects, send); err != nil {
			return err
		}
	}
	return nil
}

// lastValuesOnce is one request of lastValues.
func lastValuesOnce(ctx context.Context, nc *nats.Conn, subject, prefix, bucket string, subjects []string, send func(jetstream.KeyValueEntry) bool) error {
	body, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		Batch     int      `json:"batch"`
	}{subjects, len(subjects)})
	if err != nil {
		return err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.PublishRequest(subject, inbox, body); err != nil {
		return err
	}
	// No answer at all: the client may not publish the request (the
	// broker drops it, and says so only to the connection's error
	// handler).
	first := true
	for {
		wait := 10 * time.Second
		if first {
			wait = firstAnswer
		}
		m, err := nextMsg(ctx, sub, wait)
		if first && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return errNoMultiGet
		}
		if err != nil {
			return fmt.Errorf("batched read of %d keys: %w", len(subjects), err)
		}
		first = false
		switch st := m.Header.Get("Status"); st {
		case "":
		case "204", "404": // the end; 404: none of the keys has a value
			return nil
		case "503":
			return errNoMultiGet
		default:
			return fmt.Errorf("batched read of %d keys: broker answered %s %s", len(subjects), st, m.Header.Get("Description"))
		}
		subj := m.Header.Get("Nats-Subject")
		if !strings.HasPrefix(subj, prefix) {
			continue
		}
		e := &kvEntry{bucket: bucket, key: subj[len(prefix):], value: m.Data}
		e.rev, _ = strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		e.created, _ = time.Parse(time.RFC3339Nano, m.Header.Get("Nats-Time-Stamp"))
		switch {
		case m.Header.Get("KV-Operation") == "DEL":
			e.op = jetstream.KeyValueDelete
		case m.Header.Get("KV-Operation") == "PURGE", m.Header.Get("Nats-Marker-Reason") != "":
			e.op = jetstream.KeyValuePurge
		}
		if !send(e) {
			return nil
		}
	}
}

// firstAnswer bounds the wait for the first answer to a batched read.
const firstAnswer = 5 * time.Second

// nextMsg returns sub's next message within wait.
func nextMsg(ctx context.Context, sub *nats.Subscription, wait time.Duration) (*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return sub.NextMsgWithContext(ctx)
}

// kvEntry is a KV entry read by lastValues.
type kvEntry struct {
	bucket, key string
	value       []byte
	rev         uint64
	created     time.Time
	op          jetstream.KeyValueOp
}

func (e *kvEntry) Bucket() string                  { return e.bucket }
func (e *kvEntry) Key() string                     { return e.key }
func (e *kvEntry) Value() []byte                   { return e.value }
func (e *kvEntry) Revision() uint64                { return e.rev }
func (e *kvEntry) Created() time.Time              { return e.created }
func (e *kvEntry) Delta() uint64                   { return 0 }
func (e *kvEntry) Operation() jetstream.KeyValueOp { return e.op }
