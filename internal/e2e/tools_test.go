package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// toolsWait bounds how long a test waits for the tools that .ci/run builds
// in the background (the nats CLI, nats-server releases): about 6 minutes
// cold on 2 CPUs, more on a loaded machine.
const toolsWait = 20 * time.Minute

// waitForTools waits, when FORQ_TOOLS_PENDING names a directory, until
// "ready" appears in it, and fails the test if "failed" does (its content
// says why) or nothing appears within toolsWait. .ci/run builds the nats
// CLI and the nats-server releases in the background while the tests run,
// and only the tests that run them wait. Without FORQ_TOOLS_PENDING it
// returns at once.
func waitForTools(t *testing.T) {
	t.Helper()
	dir := os.Getenv("FORQ_TOOLS_PENDING")
	if dir == "" {
		return
	}
	start := time.Now()
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			if d := time.Since(start); d > time.Second {
				t.Logf("waited %s for the tools CI builds in the background", d.Round(time.Second))
			}
			return
		}
		if b, err := os.ReadFile(filepath.Join(dir, "failed")); err == nil {
			t.Fatalf("building the tools this test needs failed:\n%s", b)
		}
		if time.Since(start) > toolsWait {
			t.Fatalf("the tools this test needs were not built within %s (FORQ_TOOLS_PENDING=%s)", toolsWait, dir)
		}
		time.Sleep(time.Second)
	}
}
