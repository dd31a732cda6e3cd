package forq

import (
	"encoding/base64"
	"fmt"
	"time"
)

// Names and defaults of task locks and unique tasks.
const (
	// BucketLocks is the KV bucket of held locks: key = the lock key (see
	// KVKey), value = who holds it. An entry has a per-key TTL that its
	// holder keeps refreshing, so the lock of a holder that died expires.
	// Keys starting with "_" are forq's own bookkeeping.
	BucketLocks = "forq_locks"
	// BucketUnique is the KV bucket of unique keys: key = the unique key
	// (see KVKey), value = the ID of the task that holds it while it is
	// queued or running.
	BucketUnique = "forq_unique"

	// DefaultLockTTL is how long a lock outlives its holder's last refresh.
	// Holders refresh every third of it.
	DefaultLockTTL = 5 * time.Second
	// DefaultUniqueTTL bounds how long a unique key stays claimed if its
	// task's worker never releases it (the task was lost, or purged).
	DefaultUniqueTTL = 24 * time.Hour
)

// ValidateKey reports whether s can be a lock or unique key: 1 to 256
// bytes with no control characters. what names the key in the error, which
// wraps ErrInvalidTask.
func ValidateKey(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s key", ErrInvalidTask, what)
	}
	if len(s) > 256 {
		return fmt.Errorf("%w: %s key %q is longer than 256 bytes", ErrInvalidTask, what, s[:32]+"…")
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return fmt.Errorf("%w: %s key %q has control character %q", ErrInvalidTask, what, s, r)
		}
	}
	return nil
}

// KVKey maps a lock or unique key to its key in BucketLocks or
// BucketUnique. A key made of ASCII letters, digits and "-_=/." that
// starts with a letter or digit, does not end with '.' and has no "..", is
// used as it is ("user-42", "report/2026.05"); any other key becomes "="
// followed by its unpadded base64url encoding, so that every key has an
// entry of its own and none collides with forq's "_" keys.
func KVKey(s string) string {
	if kvPlain(s) {
		return s
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(s))
}

func kvPlain(s string) bool {
	if s == "" || s[len(s)-1] == '.' {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i == 0:
			return false
		case c == '-' || c == '_' || c == '=' || c == '/':
		case c == '.':
			if s[i-1] == '.' {
				return false
			}
		default:
			return false
		}
	}
	return true
}
