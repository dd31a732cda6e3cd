package forq

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// Fuzz targets of what forq decodes from outside: an exec task's payload,
// task IDs and keys (given by users, read back from the broker). Their
// seeds run in plain "go test"; .ci/run fuzzes each briefly. Subjects and
// headers are fuzzed in internal/wire.

// An exec task's payload is refused with a message, or decoded into a spec
// with a command, which encodes and decodes to the same spec.
func FuzzParseExecSpec(f *testing.F) {
	for _, s := range []string{
		`{"argv":["ls","-l"]}`, `{"argv":["sh","-c","exit 3"],"env":["A=1"],"dir":"/tmp","stdin":"x"}`,
		`{"argv":[]}`, `{"argv":[""]}`, `{"argv":["x"],"env":["=1"]}`, `{"argv":["x"],"env":["NOEQ"]}`,
		`[]`, `null`, ``, `{"argv":"ls"}`, `{"argv":["\u0000"]}`, `{"argv":["x"],"extra":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		s, err := ParseExecSpec(payload)
		if err != nil {
			if s != nil || !strings.Contains(err.Error(), "exec") {
				t.Fatalf("%q: spec %+v with error %q (want no spec, an error naming exec)", payload, s, err)
			}
			return
		}
		if len(s.Argv) == 0 || s.Argv[0] == "" {
			t.Fatalf("%q: accepted without a command: %+v", payload, s)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("%q: spec %+v does not encode: %v", payload, s, err)
		}
		s2, err := ParseExecSpec(b)
		if err != nil {
			t.Fatalf("%q: spec %+v encodes to %s, which is refused: %v", payload, s, b, err)
		}
		// An empty list and none are one spec.
		if b2, _ := json.Marshal(s2); string(b2) != string(b) || !slices.Equal(s.Argv, s2.Argv) {
			t.Fatalf("%q: spec %+v encodes to %s, which decodes to %+v, encoded %s", payload, s, b, s2, b2)
		}
	})
}

// kvKeyRe is the broker client's own test of a KV key (nats.go
// jetstream/kv.go, keyValid).
var kvKeyRe = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`)

func kvKeyValid(k string) bool {
	return k != "" && k[0] != '.' && k[len(k)-1] != '.' && !strings.Contains(k, "..") && kvKeyRe.MatchString(k)
}

// A task ID that validates is one subject token and one KV key (the
// results and cancel buckets key by it), and a task with it validates;
// KVKey maps any two different lock or unique keys to two different valid
// KV keys.
func FuzzTaskIDAndKeys(f *testing.F) {
	for _, s := range [][2]string{
		{"01a21063-9983-762e-a385-d8079c6b417f", "user-42"}, {"seq-17", "report/2026.05"}, {"a.b", "a..b"},
		{"a b", "=abc"}, {"a:b", "a."}, {"", " "}, {"id-1/retry/7", ".a"}, {"ä", "Ä"}, {"a*", "a>"},
		{strings.Repeat("x", 129), strings.Repeat("y", 300)},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, id := range []string{a, b} {
			if err := ValidateID(id); err == nil {
				if !kvKeyValid(id) || strings.ContainsAny(id, ".*> \t\r\n") {
					t.Fatalf("ID %q validates, but is not a KV key and a subject token", id)
				}
				task := Task{ID: id, Type: "t"}
				if err := task.Validate(); err != nil || task.ID != id {
					t.Fatalf("ID %q validates, but a task with it: %v (ID %q)", id, err, task.ID)
				}
			} else if !strings.Contains(err.Error(), "task ID") {
				t.Fatalf("ID %q: error %q does not say 'task ID'", id, err)
			}
		}
		ka, kb := KVKey(a), KVKey(b)
		for s, k := range map[string]string{a: ka, b: kb} {
			if !kvKeyValid(k) {
				t.Fatalf("KVKey(%q) = %q, not a valid KV key", s, k)
			}
		}
		if a != b && ka == kb {
			t.Fatalf("KVKey(%q) = KVKey(%q) = %q", a, b, ka)
		}
	})
}
