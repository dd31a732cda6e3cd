package consumer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/forqhq/forq"
)

// HandleJSON registers fn for the tasks of type T's Kind() (see
// forq.Args): each task's payload is decoded from JSON into a T, and fn
// gets it beside the task. A payload that does not decode into a T will
// not decode on a retry either: the task fails permanently (dead-lettered
// at once, not retried) with an error that names the task type, the Go
// type and the JSON error. Like Handle, it panics if T's Kind() is not a
// valid task type, and replaces a handler registered before for it; call
// it before Run.
//
// It is a function, not a method, because Go methods cannot have type
// parameters; T is inferred from fn:
//
//	consumer.HandleJSON(w, func(ctx context.Context, t *consumer.Task, r Resize) ([]byte, error) { ... })
func HandleJSON[T forq.Args](w *Worker, fn func(ctx context.Context, t *Task, args T) ([]byte, error)) {
	w.Handle(kindOf[T](), JSONHandler(fn))
}

// JSONHandler returns a Handler that decodes a task's payload from JSON
// into a T and calls fn with it, failing the task permanently if it does
// not decode (see HandleJSON). It is HandleJSON's handler, for a program
// that wraps handlers in middleware of its own before Handle.
func JSONHandler[T any](fn func(ctx context.Context, t *Task, args T) ([]byte, error)) Handler {
	return jsonHandler[T](fn)
}

type jsonHandler[T any] func(ctx context.Context, t *Task, args T) ([]byte, error)

// Handle decodes t's payload and calls the function.
func (f jsonHandler[T]) Handle(ctx context.Context, t *Task) ([]byte, error) {
	var args T
	if err := json.Unmarshal(t.Payload, &args); err != nil {
		return nil, fmt.Errorf("%w: payload of task type %q does not decode into %T: %w", ErrPermanent, t.Type, args, err)
	}
	return f(ctx, t, args)
}

// kindOf returns the task type T names, called on T's zero value.
func kindOf[T forq.Args]() (kind string) {
	var zero T
	defer func() {
		if p := recover(); p != nil {
			panic(fmt.Sprintf("consumer: HandleJSON: %T.Kind() panics on its zero value (%v): give Kind a value receiver and handle the type itself, not a pointer to it", zero, p))
		}
	}()
	return zero.Kind()
}
