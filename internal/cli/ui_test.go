package cli

import (
	"strings"
	"testing"
)

// Beyond loopback, forq ui and forq run --ui refuse to start without a
// token, before they touch the broker or the data directory.
func TestUIRefusesBeyondLoopbackWithoutToken(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"ui", "--ui-addr", "0.0.0.0:0", "--url", "nats://127.0.0.1:1"},
		{"ui", "--ui-addr", ":0", "--url", "nats://127.0.0.1:1"},
		{"run", "--ui", "--ui-addr", "0.0.0.0:0", "--port", "0", "--data-dir", dir, "-n", "1"},
	} {
		code, _, errs := forqCmd(t, args...)
		if code != ExitUsage || !strings.Contains(errs, "--ui-token") {
			t.Errorf("forq %s: exit %d, stderr %q; want %d naming --ui-token", strings.Join(args, " "), code, errs, ExitUsage)
		}
	}
}
