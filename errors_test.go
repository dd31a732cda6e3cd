package forq

import (
	"errors"
	"fmt"
	"testing"
)

// ErrInvalidTask and ErrInvalidQueue are kinds of ErrInvalidOption, not of
// each other, and keep their own messages.
func TestInvalidKinds(t *testing.T) {
	for _, tc := range []struct {
		err       error
		is, isNot []error
		msg       string
	}{
		{fmt.Errorf("%w: timeout -1s is negative", ErrInvalidTask), []error{ErrInvalidTask, ErrInvalidOption}, []error{ErrInvalidQueue}, "invalid task: timeout -1s is negative"},
		{ValidateQueue("a.b"), []error{ErrInvalidQueue, ErrInvalidOption}, []error{ErrInvalidTask}, ""},
		{fmt.Errorf("%w: bad", ErrInvalidOption), []error{ErrInvalidOption}, []error{ErrInvalidTask, ErrInvalidQueue}, "invalid option: bad"},
	} {
		for _, e := range tc.is {
			if !errors.Is(tc.err, e) {
				t.Errorf("%v: errors.Is %v = false, want true", tc.err, e)
			}
		}
		for _, e := range tc.isNot {
			if errors.Is(tc.err, e) {
				t.Errorf("%v: errors.Is %v = true, want false", tc.err, e)
			}
		}
		if tc.msg != "" && tc.err.Error() != tc.msg {
			t.Errorf("got %q, want %q", tc.err, tc.msg)
		}
	}
}
