package consumer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The least a producer and a worker may publish on, once an admin has
// declared forq's streams, buckets and consumers ('forq init'), found by
// this test: without any one of them (but those marked as serving paths
// it does not take) the test fails. The README lists them. Every user
// also subscribes to _INBOX.> for its replies.
var (
	// readTopology is the look-up every forq client makes on start.
	readTopology = []string{
		"$JS.API.STREAM.INFO.FORQ_TASKS",
		"$JS.API.STREAM.INFO.FORQ_DEAD",
		"$JS.API.STREAM.INFO.KV_forq_results",
		"$JS.API.STREAM.INFO.KV_forq_cancel",
		"$JS.API.STREAM.INFO.KV_forq_workers",
		"$JS.API.STREAM.INFO.KV_forq_locks",
		"$JS.API.STREAM.INFO.KV_forq_unique",
	}
	producerPublish = append([]string{
		"forq.tasks.>", "forq.schedule.>", // tasks, delayed tasks
		"$KV.forq_results.>", "$KV.forq_unique.>", // records, unique keys
		// Result, and the holder of a unique key taken.
		"$JS.API.DIRECT.GET.KV_forq_results.>", "$JS.API.DIRECT.GET.KV_forq_unique.>",
		// Wait watches the results.
		"$JS.API.CONSUMER.CREATE.KV_forq_results.>", "$JS.API.CONSUMER.DELETE.KV_forq_results.>",
	}, readTopology...)
	workerPublish = append([]string{
		"$JS.API.CONSUMER.INFO.FORQ_TASKS.*",
		"$JS.API.CONSUMER.MSG.NEXT.FORQ_TASKS.*",
		"$JS.ACK.FORQ_TASKS.>",
		"forq.dead.>",
		"$KV.forq_results.>", "$KV.forq_workers.>", "$KV.forq_unique.>", "$KV.forq_locks.>",
		"$JS.API.DIRECT.GET.KV_forq_unique.>",
		// Watching cancel requests.
		"$JS.API.CONSUMER.CREATE.KV_forq_cancel.>", "$JS.API.CONSUMER.DELETE.KV_forq_cancel.>",
		// Paths this test does not take: a redelivered task's record,
		// a count lock taken by others, asking whether another worker
		// still runs a redelivered task, an exec task's streamed output.
		"$JS.API.DIRECT.GET.KV_forq_results.>", "$JS.API.DIRECT.GET.KV_forq_locks.>",
		"forq.running.>", "forq.output.>",
		// Whether schedules are stored for the worker's queues: without
		// it the worker starts lookupTimeout later, and re-checks every
		// level of its queues at idle.
		"$JS.API.DIRECT.GET.FORQ_TASKS.>", "$JS.API.STREAM.MSG.GET.FORQ_TASKS",
	}, readTopology...)
	// workerSubscribe is what a worker subscribes to besides its inbox:
	// the queues' tasks, as a hint that one was published, other
	// workers' questions whether it runs a task, and the schedules (the
	// levels they target are re-checked at idle).
	workerSubscribe = []string{"forq.tasks.>", "forq.running.>", "forq.schedule.>", "forq.periodic.>"}
)

// A producer and a worker that may not create forq's streams fail at once,
// naming what is missing and how to declare it; once an admin has run
// init, they run a task end to end with nothing more than the subjects
// above.
func TestLeastPrivilegeUsersAfterInit(t *testing.T) {
	s := testutil.ServerWithUsers(t, &server.User{Username: "admin", Password: "admin-pw"},
		testutil.Limited("producer", producerPublish, nil),
		testutil.Limited("worker", workerPublish, workerSubscribe))
	refusedBeforeInit(t, s)

	// The admin declares everything.
	anc := testutil.ConnectAs(t, s, "admin", nil)
	ajs, err := jetstream.New(anc)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := topology.Init(t.Context(), ajs, topology.Options{Logger: quiet()}, []string{"default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("init: %d items, %d differ", len(rep.Items), rep.Differs())

	// Fresh connections: the earlier refusals are no longer news.
	p, err := producer.New(t.Context(), testutil.ConnectAs(t, s, "producer", nil), producer.Config{})
	if err != nil {
		t.Fatalf("producer.New after init: %v", err)
	}
	w, err := consumer.New(t.Context(), testutil.ConnectAs(t, s, "worker", nil), consumer.Config{Logger: quiet()})
	if err != nil {
		t.Fatalf("consumer.New after init: %v", err)
	}
	w.HandleFunc("upper", func(_ context.Context, task *consumer.Task) ([]byte, error) {
		if string(task.Payload) == "fail" {
			return nil, errors.New("failed on purpose")
		}
		return []byte(strings.ToUpper(string(task.Payload))), nil
	})
	start(t, w)
	runAsLeastPrivileged(t, p)
	dead, err := ajs.Stream(t.Context(), forq.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := dead.Info(t.Context()); err != nil || info.State.Msgs != 1 {
		t.Errorf("FORQ_DEAD: %v, %v; want the failed task", info, err)
	}
}

// refusedBeforeInit checks that a producer and a worker of s are refused
// at once, with the reason, before forq's streams exist.
func refusedBeforeInit(t *testing.T, s *server.Server) {
	t.Helper()
	expected := func(err error) bool { return errors.Is(err, nats.ErrPermissionViolation) }
	pnc := testutil.ConnectAs(t, s, "producer", expected)
	begin := time.Now()
	_, err := producer.New(t.Context(), pnc, producer.Config{})
	took := time.Since(begin)
	t.Logf("producer.New before init, after %s: %v", took, err)
	if !errors.Is(err, topology.ErrNotPermitted) || !strings.Contains(err.Error(), "stream FORQ_TASKS is missing and this user may not create it (not permitted to publish on $JS.API.STREAM.CREATE.FORQ_TASKS)") || !strings.Contains(err.Error(), "forq init") {
		t.Fatalf("producer.New before init: %v; want the missing stream named and forq init", err)
	}
	if took > 3*time.Second { // the JetStream API's own timeout is 5 s
		t.Errorf("producer.New took %s to be refused; want at once", took)
	}
	wnc := testutil.ConnectAs(t, s, "worker", expected)
	begin = time.Now()
	_, err = consumer.New(t.Context(), wnc, consumer.Config{Logger: quiet()})
	t.Logf("consumer.New before init, after %s: %v", time.Since(begin), err)
	if !errors.Is(err, topology.ErrNotPermitted) {
		t.Fatalf("consumer.New before init: %v; want ErrNotPermitted, not a retry until the context ends", err)
	}

}

// runAsLeastPrivileged has p's tasks run: recorded, unique, delayed, high
// priority, locked and dead-lettered; then reads a result and takes a
// unique key a queued task holds.
func runAsLeastPrivileged(t *testing.T, p *producer.Producer) {
	t.Helper()
	var info0 string // the first task's ID
	for _, tc := range []struct {
		payload string
		opts    []producer.Option
		state   forq.State
	}{
		{"least privilege", []producer.Option{producer.WithUnique("least")}, forq.StateSucceeded},
		{"delayed", []producer.Option{producer.WithDelay(100 * time.Millisecond)}, forq.StateSucceeded},
		{"urgent", []producer.Option{producer.WithPriority(forq.PriorityHigh)}, forq.StateSucceeded},
		{"locked", []producer.Option{producer.WithLock("only-one")}, forq.StateSucceeded},
		{"fail", []producer.Option{producer.WithMaxAttempts(1)}, forq.StateDead},
	} {
		tc.opts = append(tc.opts, producer.WithRecord())
		if info0 == "" {
			info0 = "first"
			tc.opts = append(tc.opts, producer.WithID(info0))
		}
		info, err := p.Enqueue(t.Context(), forq.Task{Type: "upper", Payload: []byte(tc.payload)}, tc.opts...)
		if err != nil {
			t.Fatalf("enqueue %q: %v", tc.payload, err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		r, err := p.Wait(ctx, info.ID)
		cancel()
		if err != nil {
			t.Fatalf("wait for %q: %v", tc.payload, err)
		}
		want := strings.ToUpper(tc.payload)
		if tc.state != forq.StateSucceeded {
			want = ""
		}
		if r.State != tc.state || string(r.Result) != want {
			t.Errorf("%s: result %s %q; want %s %q", tc.payload, r.State, r.Result, tc.state, want)
		}
	}
	// Reading a result, and a unique key that a queued task holds.
	if r, err := p.Result(t.Context(), info0); err != nil || r.State != forq.StateSucceeded {
		t.Errorf("Result(%s): %+v, %v; want succeeded", info0, r, err)
	}
	first, err := p.Enqueue(t.Context(), forq.Task{Type: "upper"}, producer.WithQueue("idle"), producer.WithUnique("held"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := p.Enqueue(t.Context(), forq.Task{Type: "upper"}, producer.WithQueue("idle"), producer.WithUnique("held"))
	if err != nil || !second.Duplicate || second.ID != first.ID {
		t.Errorf("second task with unique key held: %+v, %v; want a duplicate of %s", second, err, first.ID)
	}
}
