package topology

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNotPermitted means the broker refused this connection's user a
// JetStream API request forq needs: its permissions do not allow
// publishing on the request's subject.
var ErrNotPermitted = errors.New("not permitted")

// deniedError is a JetStream API request the broker refused for
// permissions. It matches ErrNotPermitted.
type deniedError struct {
	subject string // the request's subject, as the broker named it
}

func (e *deniedError) Error() string {
	return "not permitted to publish on " + e.subject
}

func (e *deniedError) Is(target error) bool { return target == ErrNotPermitted }

// deniedPoll is how often guard looks for the broker's refusal while a
// request waits for its reply.
const deniedPoll = 10 * time.Millisecond

// publishDeniedRe finds the subject in the broker's permissions violation
// for a publish, as nats.go reports it ("nats: permissions violation:
// Permissions Violation for Publish to "$JS.API.STREAM.CREATE.X"").
var publishDeniedRe = regexp.MustCompile(`(?i)publish to "(\S+)"`)

// guard runs call, JetStream API requests on nc whose subjects are the API
// prefix then one of ops ("STREAM.CREATE.FORQ_TASKS"; a consumer's create
// subject may go on after it), and returns a *deniedError at once if the broker
// refuses the request for permissions. A refused request gets no reply:
// the broker only sends the connection an error, which nats.go keeps as
// the connection's last error (and passes to its error handler), so the
// request would otherwise wait for its whole timeout.
func guard(ctx context.Context, nc *nats.Conn, ops []string, call func(context.Context) error) error {
	before := nc.LastError()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	tick := time.NewTicker(deniedPoll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				if d := denied(nc, before, ops); d != nil {
					return d
				}
			}
			return err
		case <-tick.C:
			if d := denied(nc, before, ops); d != nil {
				cancel()
				<-done
				return d
			}
		}
	}
}

// denied returns the broker's refusal to let nc publish on one of ops if
// it came after before (nc's last error when the request was sent), else
// nil.
func denied(nc *nats.Conn, before error, ops []string) *deniedError {
	err := nc.LastError()
	//nolint:errorlint // err == before: the very error value nc held before, not a kind of error
	if err == nil || err == before || !errors.Is(err, nats.ErrPermissionViolation) {
		return nil
	}
	m := publishDeniedRe.FindStringSubmatch(err.Error())
	if m == nil {
		return nil
	}
	subject := m[1]
	// The API prefix is "$JS.API." or a domain's "$JS.<domain>.API.".
	for _, op := range ops {
		if strings.HasSuffix(subject, "API."+op) || strings.Contains(subject, "API."+op+".") {
			return &deniedError{subject: subject}
		}
	}
	return nil
}
