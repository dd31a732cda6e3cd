package topology_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
)

// Require compares versions as numbers, release by release, against the
// connected server (the embedded nats-server 2.15.2) and against the API
// level the server leading FORQ_TASKS reports; what it refuses names the
// feature, the version needed and the server's. Older servers are run in
// internal/e2e servers_test.go.
func TestRequire(t *testing.T) {
	b := testutil.Broker(t)
	nc := testutil.Connect(t, b.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	h, err := topology.Ensure(t.Context(), js, topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	server := nc.ConnectedServerVersion()
	if server != "2.15.2" {
		t.Fatalf("embedded server %s: this test's versions are around 2.15.2; update them with the server", server)
	}
	for _, f := range []topology.Feature{topology.Base, topology.Delayed, topology.Periodic} {
		if err := topology.Require(t.Context(), nc, h.Tasks, f); err != nil {
			t.Errorf("Require(%s) on %s: %v", f.Name, server, err)
		}
	}
	for _, tc := range []struct {
		version string
		level   int
		old     bool
	}{
		{"2.15.2", 5, false},
		{"2.15.2-RC.1", 1, false},
		{"2.9.99", 1, false}, // 9 < 15 as numbers, not as text
		{"1.99.0", 1, false},
		{"2.15.3", 1, true},
		{"2.16.0", 1, true},
		{"3.0.0", 1, true},
		{"2.0.0", 6, true}, // the API level the stream's leader reports: 5
	} {
		f := topology.Feature{Name: "a test feature", Version: tc.version, Level: tc.level}
		err := topology.Require(t.Context(), nc, h.Tasks, f)
		if !tc.old {
			if err != nil {
				t.Errorf("Require(%s, level %d) on %s: %v, want nil", tc.version, tc.level, server, err)
			}
			continue
		}
		if !errors.Is(err, forq.ErrServerTooOld) {
			t.Errorf("Require(%s, level %d) on %s: %v, want forq.ErrServerTooOld", tc.version, tc.level, server, err)
			continue
		}
		for _, want := range []string{"a test feature", "nats-server " + tc.version + " or later", "is " + server} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Require(%s, level %d): %q does not say %q", tc.version, tc.level, err, want)
			}
		}
	}
}
