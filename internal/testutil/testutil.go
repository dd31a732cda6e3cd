// Package testutil starts real embedded brokers for forq's tests, and
// makes TLS certificates for them.
package testutil

import (
	"testing"
	"time"

	"github.com/forqhq/forq/broker"
	"github.com/nats-io/nats-server/v2/server"
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

// ServerWithUsers starts a plain nats-server with JetStream on a free
// loopback port, its data in a temporary directory, that admits only
// users (a user without Permissions may do anything), and stops it when
// the test ends.
func ServerWithUsers(tb testing.TB, users ...*server.User) *server.Server {
	tb.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: tb.TempDir(),
		NoSigs: true, NoLog: true, Users: users,
	})
	if err != nil {
		tb.Fatalf("nats-server: %v", err)
	}
	s.Start()
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats-server: not ready for connections after 10s")
	}
	return s
}

// Limited is a user that may publish on pub and subscribe to its inbox
// (_INBOX.>) and sub, and nothing else. Its password is its name + "-pw".
func Limited(name string, pub, sub []string) *server.User {
	return &server.User{Username: name, Password: name + "-pw", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: append([]string{"_INBOX.>"}, sub...)},
	}}
}

// ConnectAs connects to s as user (password: user + "-pw") and closes the
// connection when the test ends. Every asynchronous error the server
// reports (a permissions violation) fails the test, unless expected says
// it is expected.
func ConnectAs(tb testing.TB, s *server.Server, user string, expected func(error) bool) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, user+"-pw"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if expected == nil || !expected(err) {
				tb.Errorf("%s: %v", user, err)
			}
		}))
	if err != nil {
		tb.Fatalf("connect as %s: %v", user, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
