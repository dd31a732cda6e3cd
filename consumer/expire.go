package consumer

import (
	"time"

	"github.com/forqhq/forq/internal/wire"
)

// OutcomeExpired is the outcome of a task that reached its deadline before
// any worker started it: it was dropped without running.
const OutcomeExpired Outcome = "expired"

// deadline returns the task's deadline, if it has a valid one.
func deadline(t *Task) (time.Time, bool) {
	return wire.Deadline(t.Header)
}
