package consumer

import (
	"testing"
	"time"

	"github.com/forqhq/forq/internal/testutil"
	"github.com/nats-io/nats.go"
)

// A worker that runs the task but answers "still running?" late (a loaded
// machine: its answer comes after the asker's next question) is heard
// all the same, as long as it answers within the wait; nobody answering is
// "".
func TestAskHearsALateAnswer(t *testing.T) {
	b := testutil.Broker(t)
	holder := testutil.Connect(t, b.ClientURL())
	asker := testutil.Connect(t, b.ClientURL())
	const lag = 3 * askEvery
	questions := make(chan *nats.Msg, 100)
	if _, err := holder.ChanSubscribe("q.slow", questions); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case q := <-questions:
				time.Sleep(lag)
				_ = q.Respond([]byte("42 holder"))
			case <-done:
				return
			}
		}
	}()
	if err := holder.Flush(); err != nil {
		t.Fatal(err)
	}
	w := &Worker{nc: asker}
	if got := w.ask("q.slow", []byte("7"), 2*time.Second); got != "42 holder" {
		t.Errorf("ask with a holder answering %s late = %q, want its answer", lag, got)
	}
	began := time.Now()
	if got := w.ask("q.nobody", []byte("7"), 300*time.Millisecond); got != "" {
		t.Errorf("ask with nobody subscribed = %q, want none", got)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("ask with nobody subscribed gave up after %s, before its wait of 300ms", took)
	}
}

// Just after a reconnect a worker waits for an answer at least as long as
// another worker with the same options may take to reconnect.
func TestReconnectFenceWaitCoversAReconnect(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    nats.Options
		want time.Duration
	}{
		{"the CLI's options", nats.Options{Timeout: 2 * time.Second, ReconnectWait: 250 * time.Millisecond, ReconnectJitter: 100 * time.Millisecond, ReconnectJitterTLS: time.Second}, 5350 * time.Millisecond},
		{"the CLI's options over TLS", nats.Options{Secure: true, Timeout: 2 * time.Second, ReconnectWait: 250 * time.Millisecond, ReconnectJitter: 100 * time.Millisecond, ReconnectJitterTLS: time.Second}, 6250 * time.Millisecond},
		{"nats.go's defaults", nats.GetDefaultOptions(), 7100 * time.Millisecond},
		{"short ones", nats.Options{Timeout: 100 * time.Millisecond}, minReconnectFence},
		{"a 30s dial", nats.Options{Timeout: 30 * time.Second}, maxReconnectFence},
	} {
		if got := reconnectFenceWait(tc.o); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}
