package producer

import (
	"context"
	"errors"
	"fmt"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// storageCheck names a full broker storage in publish errors: it wraps
// them with forq.ErrStorageFull when the broker refused for lack of room,
// or, for a publish that got no reply, when the broker says its storage
// is full. It asks the broker at most once, so a failed batch costs one
// question. It runs only on failed publishes.
type storageCheck struct {
	ctx   context.Context
	nc    *nats.Conn
	asked bool
	full  error
}

func (c *storageCheck) wrap(err error) error {
	if err == nil || errors.Is(err, forq.ErrStorageFull) {
		return err
	}
	code := errCode(err)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		code = int(apiErr.ErrorCode)
	}
	if topology.StorageFullCode(code) {
		return fmt.Errorf("%w: %w", forq.ErrStorageFull, err)
	}
	if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrNoAck) {
		return err
	}
	if !c.asked {
		c.asked = true
		c.full = topology.AskStorageFull(c.ctx, c.nc)
	}
	if c.full != nil {
		return fmt.Errorf("%w (%w)", c.full, err)
	}
	return err
}
