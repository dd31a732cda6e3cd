package topology_test

import (
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
)

// A consumer declared with the old default ack wait (30 s) is moved to the
// new default by a worker with the default; one with an ack wait chosen on
// purpose keeps it, whatever later workers ask.
func TestEnsureConsumerMovesLegacyDefaultAckWait(t *testing.T) {
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
	for _, tc := range []struct {
		queue         string
		first, second time.Duration // ack waits the first and second declarers ask for
		want          time.Duration
	}{
		{"legacy", forq.LegacyAckWait, 0, forq.DefaultAckWait},
		{"legacy-explicit", forq.LegacyAckWait, forq.DefaultAckWait, forq.DefaultAckWait},
		{"legacy-kept", forq.LegacyAckWait, 10 * time.Second, forq.LegacyAckWait},
		{"chosen", 20 * time.Second, 0, 20 * time.Second},
		{"new", 0, forq.LegacyAckWait, forq.DefaultAckWait},
	} {
		t.Run(tc.queue, func(t *testing.T) {
			if _, err := topology.EnsureConsumer(t.Context(), nc, h.Tasks, tc.queue, tc.first); err != nil {
				t.Fatal(err)
			}
			c, err := topology.EnsureConsumer(t.Context(), nc, h.Tasks, tc.queue, tc.second)
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Config.AckWait; got != tc.want || c.CachedInfo().Config.AckWait != tc.want {
				t.Errorf("ack wait at the broker %s, cached %s; want %s", got, c.CachedInfo().Config.AckWait, tc.want)
			}
			t.Logf("declared with %s then %s: ack wait %s", tc.first, tc.second, info.Config.AckWait)
		})
	}
}
