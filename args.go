package forq

import (
	"encoding/json"
	"fmt"
)

// Args is a typed payload: a Go value that names its task type. A program
// declares the type once, in a package its producers and workers share,
// and enqueues and handles it by value rather than by a type string and
// hand-made JSON on each side (producer.Producer.EnqueueJSON and
// consumer.HandleJSON):
//
//	type Resize struct {
//		Path  string `json:"path"`
//		Width int    `json:"width"`
//	}
//
//	func (Resize) Kind() string { return "resize" }
//
// Kind must return the same valid task type (see ValidateType) for every
// value, the zero value included, as the worker calls it on the zero value
// to register the handler; so give it a value receiver, not a pointer one.
// The value travels as its encoding/json encoding.
type Args interface {
	// Kind returns the task type: the Type of the tasks that carry the
	// value, which selects their handler.
	Kind() string
}

// JSONTask returns a task of type args.Kind() whose payload is args
// encoded as JSON, for EnqueueMany or a schedule; set its other fields as
// with any task. The error wraps ErrInvalidTask when args is nil, its
// Kind is not a valid type, or it does not encode.
func JSONTask(args Args) (Task, error) {
	if args == nil {
		return Task{}, fmt.Errorf("%w: nil args", ErrInvalidTask)
	}
	kind := args.Kind()
	if err := ValidateType(kind); err != nil {
		return Task{}, fmt.Errorf("%T.Kind(): %w", args, err)
	}
	b, err := json.Marshal(args)
	if err != nil {
		return Task{}, fmt.Errorf("%w: %T (task type %q) does not encode as JSON: %v", ErrInvalidTask, args, kind, err)
	}
	return Task{Type: kind, Payload: b}, nil
}
