package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/sleep"
)

// The built-in task types of "forq work", so the CLI is useful on its own.
var builtins = map[string]struct {
	handler  consumer.HandlerFunc
	validate func(payload []byte) error
}{
	"echo": {handler: echo},
	"sleep": {handler: sleepTask, validate: func(p []byte) error {
		_, err := sleepDuration(p)
		return err
	}},
}

// echo's result is its payload.
func echo(_ context.Context, t *consumer.Task) ([]byte, error) { return t.Payload, nil }

// sleepTask sleeps for the duration its payload names ("1.5s", or the
// JSON string "1.5s") and returns "slept 1.5s".
func sleepTask(ctx context.Context, t *consumer.Task) ([]byte, error) {
	d, err := sleepDuration(t.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, consumer.ErrPermanent)
	}
	if err := sleep.For(ctx, d); err != nil {
		return nil, err
	}
	return []byte("slept " + d.String()), nil
}

func sleepDuration(p []byte) (time.Duration, error) {
	s := strings.TrimSpace(string(p))
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal([]byte(s), &s); err != nil {
			return 0, fmt.Errorf("sleep payload %q: %v", p, err)
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("sleep payload %q is not a duration like 250ms or 2s", p)
	}
	return d, nil
}
