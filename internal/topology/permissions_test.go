package topology_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// lookups are the subjects a client publishes on to look forq's topology
// up, and no more.
var lookups = []string{
	"$JS.API.STREAM.INFO.FORQ_TASKS", "$JS.API.STREAM.INFO.FORQ_DEAD",
	"$JS.API.STREAM.INFO.KV_forq_results", "$JS.API.STREAM.INFO.KV_forq_cancel",
	"$JS.API.STREAM.INFO.KV_forq_workers", "$JS.API.STREAM.INFO.KV_forq_locks",
	"$JS.API.STREAM.INFO.KV_forq_unique", "$JS.API.CONSUMER.INFO.FORQ_TASKS.*",
}

// refused is what the broker reports to a user it refuses.
func refused(err error) bool { return errors.Is(err, nats.ErrPermissionViolation) }

// atOnce bounds how long a refused request may take: well under the 5 s
// JetStream API timeout that a request without a reply would wait.
const atOnce = 3 * time.Second

func permServer(t *testing.T) *server.Server {
	t.Helper()
	return testutil.ServerWithUsers(t, &server.User{Username: "admin", Password: "admin-pw"},
		testutil.Limited("reader", lookups, nil),
		testutil.Limited("blind", []string{"$JS.API.STREAM.INFO.FORQ_DEAD"}, nil))
}

func jsOf(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A user that may only look forq's topology up uses what an admin
// declared, even when it lacks forq's newer settings: each update it may
// not make is a warning naming what is lacking, and it goes on. The
// admin's init then adds them.
func TestReaderWorksOnWithoutUpgrades(t *testing.T) {
	s := permServer(t)
	admin := jsOf(t, testutil.ConnectAs(t, s, "admin", nil))
	if _, err := topology.Init(t.Context(), admin, topology.Options{}, []string{"old"}, 0); err != nil {
		t.Fatal(err)
	}
	// As an older forq left them: no direct access, the old ack wait.
	for _, name := range []string{forq.StreamTasks, forq.StreamDead} {
		st, err := admin.Stream(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.AllowDirect = false
		if _, err := admin.UpdateStream(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	c, err := admin.Consumer(t.Context(), forq.StreamTasks, wire.ConsumerName("old"))
	if err != nil {
		t.Fatal(err)
	}
	ccfg := c.CachedInfo().Config
	ccfg.AckWait = forq.LegacyAckWait
	if _, err := admin.UpdateConsumer(t.Context(), forq.StreamTasks, ccfg); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	prev := slog.Default()
	slog.SetDefault(log) // EnsureLevelConsumer warns on slog's default
	t.Cleanup(func() { slog.SetDefault(prev) })

	rnc := testutil.ConnectAs(t, s, "reader", refused)
	begin := time.Now()
	h, err := topology.Ensure(t.Context(), jsOf(t, rnc), topology.Options{Logger: log})
	if err != nil {
		t.Fatalf("Ensure as reader: %v", err)
	}
	rc, err := topology.EnsureConsumer(t.Context(), rnc, h.Tasks, "old", 0)
	if err != nil {
		t.Fatalf("EnsureConsumer as reader: %v", err)
	}
	took := time.Since(begin)
	t.Logf("reader declared in %s; warnings:\n%s", took, logs.String())
	if took > 2*atOnce {
		t.Errorf("the reader took %s; want each refused update given up at once", took)
	}
	if h.Dead.CachedInfo().Config.AllowDirect || rc.CachedInfo().Config.AckWait != forq.LegacyAckWait {
		t.Errorf("the reader got direct access %v, ack wait %s; want the streams and consumer as they are", h.Dead.CachedInfo().Config.AllowDirect, rc.CachedInfo().Config.AckWait)
	}
	for _, w := range []string{
		"stream FORQ_TASKS lacks direct access, and this user may not update it (not permitted to publish on $JS.API.STREAM.UPDATE.FORQ_TASKS): going on without; run 'forq init' with an admin credential",
		"stream FORQ_DEAD lacks direct access, and this user may not update it",
		"consumer old on FORQ_TASKS has the old default ack wait 30s, and this user may not update it",
	} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("no warning %q", w)
		}
	}

	rep, err := topology.Init(t.Context(), admin, topology.Options{}, []string{"old"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, it := range rep.Items {
		states[it.Name] = string(it.State) + " " + strings.Join(it.Added, ", ")
	}
	t.Logf("admin's init: %v", states)
	for name, want := range map[string]string{
		forq.StreamTasks: "upgraded direct access",
		forq.StreamDead:  "upgraded direct access",
		"old":            "upgraded ack wait from the old default ack wait 30s to 3s",
		"old--high":      "exists ",
	} {
		if states[name] != want {
			t.Errorf("init: %s %q; want %q", name, states[name], want)
		}
	}
	if rep.Differs() != 0 {
		t.Errorf("init: %d items differ; want none: %+v", rep.Differs(), rep.Items)
	}
}

// A user that finds something missing, or may not look it up, is refused
// at once with what and why, not after the API's timeout; Retry does not
// retry it.
func TestRefusalsAreAtOnceAndNamed(t *testing.T) {
	s := permServer(t)
	admin := jsOf(t, testutil.ConnectAs(t, s, "admin", nil))
	if _, err := topology.Ensure(t.Context(), admin, topology.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteKeyValue(t.Context(), forq.BucketUnique); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, want string
	}{
		{"reader", "KV bucket forq_unique is missing and this user may not create it (not permitted to publish on $JS.API."},
		{"blind", "this user may not look up stream FORQ_TASKS (not permitted to publish on $JS.API.STREAM.INFO.FORQ_TASKS)"},
	} {
		t.Run(tc.user, func(t *testing.T) {
			nc := testutil.ConnectAs(t, s, tc.user, refused)
			js := jsOf(t, nc)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			begin := time.Now()
			_, err := topology.Retry(ctx, nc, slog.New(slog.DiscardHandler), func(ctx context.Context) (*topology.Handles, error) {
				return topology.Ensure(ctx, js, topology.Options{})
			})
			took := time.Since(begin)
			t.Logf("%s refused after %s: %v", tc.user, took, err)
			if !errors.Is(err, topology.ErrNotPermitted) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want ErrNotPermitted and %q", err, tc.want)
			}
			if took > atOnce {
				t.Errorf("refused after %s; want at once", took)
			}
		})
	}
}
