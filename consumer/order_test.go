package consumer_test

import (
	"errors"
	"testing"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
)

func TestOrderConfigErrors(t *testing.T) {
	b := setup(t)
	for _, cfg := range []consumer.Config{
		{Queues: []string{"a"}, Order: "fair"},
		{Queues: []string{"a", "b"}, Weights: map[string]int{"a": 2}},
		{Queues: []string{"a", "b"}, Order: consumer.OrderWeighted, Weights: map[string]int{"c": 2}},
		{Queues: []string{"a", "b"}, Order: consumer.OrderWeighted, Weights: map[string]int{"a": 0}},
		{Queues: []string{"a", "a"}},
		{Queues: []string{"a--high"}},
	} {
		if _, err := consumer.New(t.Context(), b.nc, cfg); !errors.Is(err, forq.ErrInvalidOption) && !errors.Is(err, forq.ErrInvalidQueue) {
			t.Errorf("New(%+v) = %v, want an invalid option or queue error", cfg, err)
		}
	}
}
