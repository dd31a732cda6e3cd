package consumer_test

import (
	"strings"
	"testing"

	"github.com/forqhq/forq/consumer"
)

// A worker's name is shown on terminals: CheckName refuses what would
// garble one, and names the problem.
func TestCheckName(t *testing.T) {
	for _, c := range []struct {
		name, err string
	}{
		{"", ""},
		{"web-1", ""},
		{"batch host (eu)", ""},
		{"café", ""},
		{strings.Repeat("a", consumer.MaxNameLen), ""},
		{strings.Repeat("a", consumer.MaxNameLen+1), "longer than 253 bytes"},
		{"a\nb", "control character"},
		{"a\x1b[2J", "control character"},
		{"a\xffb", "not UTF-8"},
	} {
		err := consumer.CheckName(c.name)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("CheckName(%q) = %v, want nil", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("CheckName(%q) = %v, want an error saying %q", c.name, err, c.err)
		}
	}
}
