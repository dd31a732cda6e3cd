package forq

import (
	"errors"
	"strings"
	"testing"
)

type point struct {
	X, Y float64
}

func (point) Kind() string { return "point" }

type badType struct{}

func (badType) Kind() string { return "a b" }

type noJSON struct{ C chan int }

func (noJSON) Kind() string { return "nojson" }

// JSONTask makes a task of the args' kind with the args as JSON, and
// refuses nil args, a bad kind and a value that does not encode.
func TestJSONTask(t *testing.T) {
	task, err := JSONTask(point{1, 2})
	if err != nil || task.Type != "point" || string(task.Payload) != `{"X":1,"Y":2}` {
		t.Errorf("got %+v, %v; want a point task with payload {\"X\":1,\"Y\":2}", task, err)
	}
	for _, tc := range []struct {
		args Args
		says string
	}{
		{nil, "nil args"},
		{badType{}, "forq.badType.Kind()"},
		{noJSON{}, "forq.noJSON (task type \"nojson\") does not encode as JSON"},
	} {
		_, err := JSONTask(tc.args)
		if !errors.Is(err, ErrInvalidTask) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%T: got %v, want an invalid task error saying %q", tc.args, err, tc.says)
		}
	}
}
