package pull_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// The engine's goroutines all end when Run returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type bundle struct {
	nc *nats.Conn
	js jetstream.JetStream
	p  *producer.Producer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{nc: nc, js: js, p: p}
}

// idlePoll is the engines' Config.IdlePoll, the worker's default.
const idlePoll = 250 * time.Millisecond

// newEngine makes an engine on b for cfg, with a worker's defaults.
func newEngine(t *testing.T, b *bundle, cfg pull.Config) *pull.Engine {
	t.Helper()
	s, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Conn, cfg.Stream = b.nc, s
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = time.Second
	}
	if cfg.IdlePoll == 0 {
		cfg.IdlePoll = idlePoll
	}
	if cfg.AckLinger == 0 {
		cfg.AckLinger = time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e, err := pull.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// handlers runs a delivery by its task's type, then acks it, as a worker
// does with a task that succeeds.
type handlers map[string]func(ctx context.Context, d pull.Delivery)

func (h handlers) Deliver(ctx context.Context, d pull.Delivery) bool {
	if f := h[d.Msg.Headers().Get("Forq-Type")]; f != nil {
		f(ctx, d)
	}
	_ = d.Msg.Ack()
	return false
}

func (h handlers) Exit() {}

// start runs e with runners of h until the test ends; stop ends its
// pulling and waits for Run to return.
func start(t *testing.T, e *pull.Engine, h handlers) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- e.Run(ctx, func() pull.Runner { return h }) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}
