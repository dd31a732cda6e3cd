package topology

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
)

// BrokerHealth is a forq broker's answer on forq.SubjectBrokerHealth.
type BrokerHealth struct {
	// Healthy is true when the broker can store tasks.
	Healthy bool `json:"healthy"`
	// StorageFull is true when it cannot for lack of room: JetStream's
	// storage limit is reached, or the disk is full and JetStream disabled.
	StorageFull bool `json:"storage_full,omitempty"`
	// Error is the reason when the broker is not healthy.
	Error string `json:"error,omitempty"`
}

// Err returns nil for a healthy broker, else an error with the broker's
// reason, wrapping forq.ErrStorageFull when storage is the cause.
func (h BrokerHealth) Err() error {
	switch {
	case h.Healthy:
		return nil
	case h.StorageFull:
		return fmt.Errorf("%w: %s", forq.ErrStorageFull, h.Error)
	default:
		return errors.New(h.Error)
	}
}

// ErrNotForqBroker means nobody answers on forq.SubjectBrokerHealth: the
// server is a plain nats-server (or an older forq broker).
var ErrNotForqBroker = errors.New("not a forq broker")

// AskHealth asks the broker behind nc how it is. The error wraps
// ErrNotForqBroker when nobody answers at once.
func AskHealth(ctx context.Context, nc *nats.Conn) (BrokerHealth, error) {
	m, err := nc.RequestWithContext(ctx, forq.SubjectBrokerHealth, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return BrokerHealth{}, ErrNotForqBroker
	}
	if err != nil {
		return BrokerHealth{}, fmt.Errorf("broker health: %w", err)
	}
	var h BrokerHealth
	if err := json.Unmarshal(m.Data, &h); err != nil {
		return BrokerHealth{}, fmt.Errorf("broker health: malformed answer %q: %w", m.Data, err)
	}
	return h, nil
}

// StorageFullCode tells whether code, a JetStream API error code, means
// the broker's storage is out of room: 10023 (insufficient resources: the
// server's storage limit) or 10047 (an account's storage limit).
func StorageFullCode(code int) bool { return code == 10023 || code == 10047 }

// AskStorageFull asks the broker behind nc, within a short time of its own,
// whether its storage is full, for an operation that got no reply (a
// broker whose JetStream is disabled after a full disk answers nothing).
// It returns an error wrapping forq.ErrStorageFull with the broker's
// reason, or nil when the broker says otherwise or does not say.
func AskStorageFull(ctx context.Context, nc *nats.Conn) error {
	if nc == nil || !nc.IsConnected() {
		return nil
	}
	// The caller's own context may be spent by now.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), askTimeout)
	defer cancel()
	h, err := AskHealth(qctx, nc)
	if err != nil || !h.StorageFull {
		return nil
	}
	return h.Err()
}

// askTimeout bounds AskStorageFull's question.
const askTimeout = 500 * time.Millisecond

// Back-off of Retry.
const (
	retryFirst = 250 * time.Millisecond
	retryMax   = 5 * time.Second
)

// Retry calls declare until it succeeds, fails for bad input
// (forq.ErrInvalidQueue, forq.ErrInvalidOption), finds the server too old
// for forq (forq.ErrServerTooOld), fails for permissions (ErrNotPermitted:
// waiting would not help) or ctx ends, logging each
// failure with the broker's reason when its storage is full: a broker that
// cannot declare forq's streams or consumers now (its disk full and
// JetStream disabled, JetStream still starting) is waited for, rather than
// the worker or pool exiting and being restarted in a loop. It returns the
// last error when ctx ends.
func Retry[T any](ctx context.Context, nc *nats.Conn, log *slog.Logger, declare func(context.Context) (T, error)) (T, error) {
	wait := retryFirst
	for attempt := 1; ; attempt++ {
		v, err := declare(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info("declared after waiting for the broker", "attempts", attempt)
			}
			return v, nil
		}
		if ctx.Err() != nil || errors.Is(err, forq.ErrInvalidQueue) || errors.Is(err, forq.ErrInvalidOption) || errors.Is(err, forq.ErrServerTooOld) || errors.Is(err, ErrNotPermitted) {
			return v, err
		}
		if full := AskStorageFull(ctx, nc); full != nil {
			err = fmt.Errorf("%w (%w)", full, err)
		}
		log.Warn("cannot declare forq's streams or consumers; retrying", "err", err, "attempt", attempt, "retry_in", wait)
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(wait):
		}
		wait = min(2*wait, retryMax)
	}
}
