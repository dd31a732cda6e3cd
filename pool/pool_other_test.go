//go:build !linux

package pool

import (
	"errors"
	"testing"
)

// Off Linux the pool's other tests do not build (they start children with
// a parent-death signal and read /proc); New says the system is not
// supported.
func TestNewUnsupported(t *testing.T) {
	_, err := New(Config{Size: 1, Command: []string{"true"}})
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("New: got %v, want an error wrapping errors.ErrUnsupported", err)
	}
}
