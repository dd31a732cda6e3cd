package admin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoQueue is wrapped by the errors of Resume, Paused and Tasks for a
// queue the broker does not know: it has no consumer (no worker or pause
// ever declared it), and for Tasks no task either.
var ErrNoQueue = errors.New("no such queue")

// Config configures an Inspector. The zero value is ready to use.
type Config struct {
	// Replicas, ResultTTL and DuplicateWindow apply when a method that
	// writes is the first to declare forq's streams and buckets; see
	// topology. 0 means the defaults (1, forq.DefaultResultTTL,
	// forq.DefaultDuplicateWindow).
	Replicas        int
	ResultTTL       time.Duration
	DuplicateWindow time.Duration
}

// Inspector inspects and operates forq's queues on one broker. It is safe
// for concurrent use. It does not own the NATS connection it is given.
type Inspector struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg Config

	mu       sync.Mutex
	declared *topology.Handles // nil until a write declared the topology
}

// New returns an Inspector on nc. It checks that the broker has JetStream
// (the error says so when it has not) and creates nothing: see the
// package doc. Negative Config values are an error wrapping
// forq.ErrInvalidOption.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Inspector, error) {
	switch {
	case nc == nil:
		return nil, fmt.Errorf("admin: %w: no NATS connection", forq.ErrInvalidOption)
	case cfg.Replicas < 0:
		return nil, fmt.Errorf("admin: %w: replicas %d is negative", forq.ErrInvalidOption, cfg.Replicas)
	case cfg.ResultTTL < 0:
		return nil, fmt.Errorf("admin: %w: result TTL %s is negative", forq.ErrInvalidOption, cfg.ResultTTL)
	case cfg.DuplicateWindow < 0:
		return nil, fmt.Errorf("admin: %w: duplicate window %s is negative", forq.ErrInvalidOption, cfg.DuplicateWindow)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		return nil, fmt.Errorf("admin: the broker at %s: JetStream: %w", nc.ConnectedUrl(), err)
	}
	return &Inspector{nc: nc, js: js, cfg: cfg}, nil
}

// declare declares forq's streams and buckets, once, for a method that
// writes.
func (in *Inspector) declare(ctx context.Context) (*topology.Handles, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.declared != nil {
		return in.declared, nil
	}
	h, err := topology.Ensure(ctx, in.js, topology.Options{
		Replicas:        in.cfg.Replicas,
		ResultTTL:       in.cfg.ResultTTL,
		DuplicateWindow: in.cfg.DuplicateWindow,
	})
	if err != nil {
		if full := topology.AskStorageFull(ctx, in.nc); full != nil {
			return nil, fmt.Errorf("%w (%w)", full, err)
		}
		return nil, err
	}
	in.declared = h
	return h, nil
}

// stream returns stream name, or nil if it does not exist (yet): a read
// finds nothing there.
func (in *Inspector) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := in.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return s, nil
}

// headerSize is the size of h on the wire.
func headerSize(h nats.Header) int64 {
	n := int64(len("NATS/1.0\r\n\r\n"))
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}
