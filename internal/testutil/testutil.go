// Package testutil starts real embedded brokers for forq's tests.
package testutil

import (
	"testing"
	"time"

	"github.com/forqhq/forq/broker"
	"github.com/nats-io/nats.go"
)

// Broker starts an embedded broker on a free port with its data in a
// temporary directory, and stops it when the test ends.
func Broker(tb testing.TB) *broker.Server {
	tb.Helper()
	return BrokerIn(tb, tb.TempDir(), 0)
}

// BrokerIn starts an embedded broker on port (0: a free one) with its data
// in dir, and stops it when the test ends.
func BrokerIn(tb testing.TB, dir string, port int) *broker.Server {
	tb.Helper()
	s, err := broker.New(broker.Options{DataDir: dir, Port: port})
	if err != nil {
		tb.Fatalf("broker: %v", err)
	}
	s.Start()
	tb.Cleanup(s.Shutdown)
	if err := s.WaitReady(10 * time.Second); err != nil {
		tb.Fatalf("broker: %v", err)
	}
	return s
}

// Connect connects to url and closes the connection when the test ends.
func Connect(tb testing.TB, url string) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		tb.Fatalf("connect %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// Eventually polls cond every 10 ms until it holds or d passes, then fails
// the test with msg.
func Eventually(tb testing.TB, d time.Duration, cond func() bool, msg string, args ...any) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf(msg, args...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
