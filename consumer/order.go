package consumer

import (
	"fmt"
	"time"

	"github.com/forqhq/forq"
)

// Priorities and several queues.
//
// A worker serves every priority level (forq.Priority) of each of its
// queues, highest level first, and within a level its queues in
// Config.Order; see internal/pull's scheduler.go for how its pull engine
// sweeps them and what that costs.

// Order is how a worker with several queues chooses between them, within
// a priority level.
type Order string

// The orders.
const (
	// OrderStrict always prefers the earlier queue of Config.Queues: a
	// later queue's tasks start only when the earlier ones have none
	// (at that level).
	OrderStrict Order = "strict"
	// OrderWeighted picks the queue for each pull in proportion to
	// Config.Weights, falling back to the others when it is empty.
	OrderWeighted Order = "weighted"
)

// ParseOrder parses "strict" or "weighted"; "" is strict. The error wraps
// forq.ErrInvalidOption.
func ParseOrder(s string) (Order, error) {
	switch Order(s) {
	case "", OrderStrict:
		return OrderStrict, nil
	case OrderWeighted:
		return OrderWeighted, nil
	}
	return "", fmt.Errorf("%w: order %q: use strict or weighted", forq.ErrInvalidOption, s)
}

// DefaultIdlePoll bounds the long poll of an idle worker: how late it may
// notice a task of a level other than the one it waits on that was not
// enqueued anew (redelivered after its ack wait or a nak with a delay, or
// queued by the broker's schedule); a task enqueued to any of its levels
// ends the wait at once. A worker of several queues waits at most 250 ms
// at a time (it is not told of tasks enqueued to its other queues).
const DefaultIdlePoll = time.Second

// MaxWeight is the largest weight of a queue.
const MaxWeight = 1000

// checkOrder validates and fills Config.Order and Config.Weights.
func checkOrder(cfg *Config) error {
	o, err := ParseOrder(string(cfg.Order))
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	cfg.Order = o
	if cfg.IdlePoll < 0 {
		return fmt.Errorf("consumer: %w: idle poll %s is negative", forq.ErrInvalidOption, cfg.IdlePoll)
	}
	if cfg.IdlePoll == 0 {
		cfg.IdlePoll = DefaultIdlePoll
	}
	seen := map[string]bool{}
	for _, q := range cfg.Queues {
		if seen[q] {
			return fmt.Errorf("consumer: %w: queue %q is listed twice", forq.ErrInvalidOption, q)
		}
		seen[q] = true
	}
	if len(cfg.Weights) > 0 && o != OrderWeighted {
		return fmt.Errorf("consumer: %w: weights need OrderWeighted", forq.ErrInvalidOption)
	}
	for q, n := range cfg.Weights {
		if !seen[q] {
			return fmt.Errorf("consumer: %w: weight for queue %q, which is not one of the worker's queues %v", forq.ErrInvalidOption, q, cfg.Queues)
		}
		if n < 1 || n > MaxWeight {
			return fmt.Errorf("consumer: %w: weight %d of queue %q: must be 1 to %d", forq.ErrInvalidOption, n, q, MaxWeight)
		}
	}
	return nil
}
