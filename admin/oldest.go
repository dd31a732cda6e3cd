package admin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// OldestQueued returns, for each priority level of queue that has a task
// waiting for a worker, when the oldest of them was stored: the stream
// timestamp of the level's first message not yet delivered (after the
// last one its consumer delivered; any on the level's subject when it has
// no consumer yet). A level with nothing waiting is not in the map. A
// task handed back or retried is not waiting in this sense (it counts in
// QueueStats.Unacked), nor is a delayed task before it is due. A bad
// queue name is an error wrapping forq.ErrInvalidQueue.
func (in *Inspector) OldestQueued(ctx context.Context, queue string) (map[forq.Priority]time.Time, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return nil, err
	}
	out := map[forq.Priority]time.Time{}
	tasks, err := in.stream(ctx, forq.StreamTasks)
	if err != nil || tasks == nil {
		return out, err
	}
	for _, p := range forq.Priorities {
		from := uint64(1)
		c, err := tasks.Consumer(ctx, wire.LevelConsumerName(queue, p))
		switch {
		case err == nil:
			ci, err := c.Info(ctx)
			if err != nil {
				return nil, fmt.Errorf("queue %s: %w", queue, err)
			}
			if ci.NumPending == 0 {
				continue
			}
			from = ci.Delivered.Stream + 1
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			return nil, fmt.Errorf("queue %s: %w", queue, err)
		}
		m, err := tasks.GetMsg(ctx, from, jetstream.WithGetMsgSubject(wire.LevelSubject(queue, p)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("queue %s: oldest task: %w", queue, err)
		}
		out[p] = m.Time
	}
	return out, nil
}
