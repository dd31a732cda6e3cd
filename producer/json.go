package producer

import (
	"context"

	"github.com/forqhq/forq"
)

// EnqueueJSON enqueues a task of type args.Kind() whose payload is args
// encoded as JSON (see forq.Args and forq.JSONTask), with opts as for
// Enqueue. A worker handles it with consumer.HandleJSON on the same type.
// Errors are Enqueue's; an args that is nil, names an invalid type or
// does not encode is an error wrapping forq.ErrInvalidTask.
func (p *Producer) EnqueueJSON(ctx context.Context, args forq.Args, opts ...Option) (*Info, error) {
	t, err := forq.JSONTask(args)
	if err != nil {
		return nil, err
	}
	return p.Enqueue(ctx, t, opts...)
}
