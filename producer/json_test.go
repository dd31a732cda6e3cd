package producer_test

import (
	"errors"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

type square struct{ N int }

func (square) Kind() string { return "square" }

// EnqueueJSON enqueues the value as a task of its kind with its options,
// and refuses nil args before publishing anything.
func TestEnqueueJSON(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.EnqueueJSON(t.Context(), nil); !errors.Is(err, forq.ErrInvalidTask) {
		t.Errorf("nil args: got %v, want forq.ErrInvalidTask", err)
	}
	// A deadline makes the record at enqueue (see WithRecord).
	info, err := p.EnqueueJSON(t.Context(), square{N: 7}, producer.WithQueue("math"), producer.WithRecord(), producer.WithExpiresIn(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Result(t.Context(), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Type != "square" || r.Queue != "math" || r.State != forq.StateQueued {
		t.Errorf("record %+v, want a queued square task in queue math", r)
	}
}
