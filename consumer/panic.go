package consumer

import (
	"fmt"
	"runtime"
	"strings"
)

// A handler's panic is a failed attempt, not a crash. Its error names the
// panic's value and the file and line of the frame that panicked, short
// enough for the task's record and dead-letter header; the whole stack
// goes to the worker's log, where a developer looks for it.

// panicked turns the panic p of a task's handler into its error, and logs
// the stack. It must be called by the deferred function that recovered p,
// while the panicking frames are still on the stack.
func panicked(log *taskLog, p any) error {
	at := panicSite()
	buf := make([]byte, 16<<10)
	buf = buf[:runtime.Stack(buf, false)]
	log.get().Error("handler panicked", "panic", p, "at", at, "stack", string(buf))
	if e, ok := p.(error); ok {
		return fmt.Errorf("handler panicked: %w (at %s)", e, at)
	}
	return fmt.Errorf("handler panicked: %v (at %s)", p, at)
}

// panicSite returns "file:line" of the frame that panicked: the first
// frame below runtime.gopanic that is not the runtime's own (a nil map
// write or an index out of range panics inside the runtime, called from
// the faulty line).
func panicSite() string {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	below := false
	for {
		f, more := frames.Next()
		if below && !strings.HasPrefix(f.Function, "runtime.") {
			return fmt.Sprintf("%s:%d", f.File, f.Line)
		}
		below = below || f.Function == "runtime.gopanic"
		if !more {
			return "unknown"
		}
	}
}
