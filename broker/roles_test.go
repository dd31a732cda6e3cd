package broker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// rolesBroker starts a broker with per-role credentials in a temporary
// directory, and returns it with that directory.
func rolesBroker(t *testing.T) (*broker.Server, string) {
	t.Helper()
	creds := t.TempDir() + "/creds"
	s, err := broker.New(broker.Options{DataDir: t.TempDir(), CredentialsDir: creds})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if err := s.WaitReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	return s, creds
}

// violations records the permission errors a connection is told of.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
	}
}

func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.errs...)
}

// connectAs connects to s as role, with the seed the broker wrote.
func connectAs(t *testing.T, s *broker.Server, creds, role string, v *violations) *nats.Conn {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(broker.SeedFile(creds, role))
	if err != nil {
		t.Fatal(err)
	}
	opts := []nats.Option{opt, nats.Name("test " + role)}
	if v != nil {
		opts = append(opts, nats.ErrorHandler(v.handler))
	}
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// A least-privilege producer and worker run the main flow against the
// topology an admin declared: enqueue, run, wait for the result, cancel,
// a unique key, a delayed task, a lock; neither is refused a subject.
func TestRolesRunTheMainFlow(t *testing.T) {
	s, creds := rolesBroker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	admin := connectAs(t, s, creds, broker.RoleAdmin, nil)
	ajs, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topology.Ensure(ctx, ajs, topology.Options{}); err != nil {
		t.Fatalf("admin declares the topology: %v", err)
	}

	var pv, wv violations
	pnc := connectAs(t, s, creds, broker.RoleProducer, &pv)
	wnc := connectAs(t, s, creds, broker.RoleWorker, &wv)
	p, err := producer.New(ctx, pnc, producer.Config{})
	if err != nil {
		t.Fatalf("producer.New as producer: %v (refused: %v)", err, pv.list())
	}
	w, err := consumer.New(ctx, wnc, consumer.Config{Queues: []string{"roles"}})
	if err != nil {
		t.Fatalf("consumer.New as worker: %v (refused: %v)", err, wv.list())
	}
	w.HandleFunc("echo", func(_ context.Context, task *consumer.Task) ([]byte, error) {
		return append([]byte("echo "), task.Payload...), nil
	})
	w.HandleFunc("slow", func(ctx context.Context, _ *consumer.Task) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	wctx, wstop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() {
		wstop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: %v", err)
		}
	}()

	w.HandleFunc("fail", func(context.Context, *consumer.Task) ([]byte, error) {
		return nil, fmt.Errorf("no good: %w", consumer.ErrPermanent)
	})
	wait := func(task forq.Task, want forq.State) *forq.Result {
		t.Helper()
		task.Queue, task.Record = "roles", true
		info, err := p.Enqueue(ctx, task)
		if err != nil {
			t.Fatalf("enqueue %+v: %v (refused: %v)", task, err, pv.list())
		}
		res, err := p.Wait(ctx, info.ID)
		if err != nil {
			t.Fatalf("wait %+v: %v (producer refused: %v; worker refused: %v)", task, err, pv.list(), wv.list())
		}
		if res.State != want {
			t.Errorf("task %+v: state %s, want %s (error %q)", task, res.State, want, res.Error)
		}
		return res
	}
	if res := wait(forq.Task{Type: "echo", Payload: []byte("hi")}, forq.StateSucceeded); string(res.Result) != "echo hi" {
		t.Errorf("result %q, want %q", res.Result, "echo hi")
	}
	wait(forq.Task{Type: "echo", UniqueKey: "u1"}, forq.StateSucceeded)
	wait(forq.Task{Type: "echo", UniqueKey: "u1"}, forq.StateSucceeded) // the worker released the key
	wait(forq.Task{Type: "echo", LockKey: "l1"}, forq.StateSucceeded)
	wait(forq.Task{Type: "echo", Delay: 300 * time.Millisecond}, forq.StateSucceeded)
	wait(forq.Task{Type: "echo", Priority: forq.PriorityHigh}, forq.StateSucceeded)
	wait(forq.Task{Type: "fail"}, forq.StateDead)

	runBatch(ctx, t, p, &pv, &wv)

	info, err := p.Enqueue(ctx, forq.Task{Type: "slow", Queue: "roles", Record: true})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := p.Result(ctx, info.ID)
		return err == nil && r.State == forq.StateRunning
	}, "the slow task never ran")
	if err := p.Cancel(ctx, info.ID); err != nil {
		t.Fatalf("cancel: %v (refused: %v)", err, pv.list())
	}
	if res, err := p.Wait(ctx, info.ID); err != nil || res.State != forq.StateCanceled {
		t.Errorf("canceled task: %+v, %v", res, err)
	}

	cancelDelayed(ctx, t, p, ajs, &pv)

	if v := pv.list(); len(v) > 0 {
		t.Errorf("the producer was refused: %v", v)
	}
	if v := wv.list(); len(v) > 0 {
		t.Errorf("the worker was refused: %v", v)
	}
}

// runBatch enqueues a batch, two of whose tasks contend for a lock, and
// waits for all of them.
func runBatch(ctx context.Context, t *testing.T, p *producer.Producer, pv, wv *violations) {
	t.Helper()
	// A batch, two of which contend for a lock.
	batch := []forq.Task{
		{Type: "echo", Queue: "roles", Record: true, LockKey: "l2"},
		{Type: "echo", Queue: "roles", Record: true, LockKey: "l2"},
		{Type: "echo", Queue: "roles", Record: true},
	}
	infos, err := p.EnqueueMany(ctx, batch)
	if err != nil {
		t.Fatalf("enqueue many: %v (refused: %v)", err, pv.list())
	}
	ids := make([]string, len(infos))
	for i, in := range infos {
		ids[i] = in.ID
	}
	results, err := p.WaitMany(ctx, ids)
	if err != nil {
		t.Fatalf("wait many: %v (producer refused: %v; worker refused: %v)", err, pv.list(), wv.list())
	}
	for _, r := range results {
		if r.State != forq.StateSucceeded {
			t.Errorf("batch task %s: %s (%s)", r.ID, r.State, r.Error)
		}
	}
}

// cancelDelayed cancels a delayed task before it is due, and checks that
// its schedule is gone.
func cancelDelayed(ctx context.Context, t *testing.T, p *producer.Producer, ajs jetstream.JetStream, pv *violations) {
	t.Helper()
	// A delayed task canceled before it is due: its schedule is gone.
	info, err := p.Enqueue(ctx, forq.Task{Type: "echo", Queue: "roles", Record: true, Delay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cancel(ctx, info.ID); err != nil {
		t.Fatalf("cancel a delayed task: %v (refused: %v)", err, pv.list())
	}
	tasks, err := ajs.Stream(ctx, forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tasks.GetLastMsgForSubject(ctx, forq.SubjectSchedulePrefix+"roles."+info.ID); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("the canceled task's schedule is still in %s: %v", forq.StreamTasks, err)
	}
	if res, err := p.Result(ctx, info.ID); err != nil || res.State != forq.StateCanceled {
		t.Errorf("canceled delayed task: %+v, %v", res, err)
	}
}

// refused runs op, which role's connection must be refused, and checks
// that it failed and that the broker named subject in a permissions
// violation.
func refused(t *testing.T, v *violations, what, subject string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := op(ctx); err == nil {
		t.Errorf("%s: allowed, want refused", what)
		return
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, e := range v.list() {
			if strings.Contains(e, `"`+subject+`"`) {
				return true
			}
		}
		return false
	}, "%s: no permissions violation on %s (got %v)", what, subject, v.list())
}

// purge purges stream through js, with no look-up first (which would need
// a right of its own).
func purge(ctx context.Context, js jetstream.JetStream, stream string) error {
	resp, err := js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+stream, nil)
	if err != nil {
		return err
	}
	if strings.Contains(string(resp.Data), `"error"`) {
		return fmt.Errorf("purge %s: %s", stream, resp.Data)
	}
	return nil
}

// Each role gets its subjects and no more: no one connects without a
// credential of the directory; a producer cannot consume, purge or delete
// a stream; a worker cannot delete a stream nor purge or delete dead
// letters; an admin can do all of it; sys is the system account.
func TestRolesAreEnforced(t *testing.T) {
	s, creds := rolesBroker(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	if nc, err := nats.Connect(s.ClientURL()); err == nil {
		nc.Close()
		t.Error("an anonymous client connected")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("anonymous client: %v, want an authorization violation", err)
	}
	stranger, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := stranger.Seed()
	strangerFile := filepath.Join(t.TempDir(), "stranger.nk")
	if err := os.WriteFile(strangerFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	opt, err := nats.NkeyOptionFromSeed(strangerFile)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(s.ClientURL(), opt); err == nil {
		nc.Close()
		t.Error("a client with an nkey the broker does not know connected")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("unknown nkey: %v, want an authorization violation", err)
	}

	admin := connectAs(t, s, creds, broker.RoleAdmin, nil)
	ajs, _ := jetstream.New(admin)
	if _, err := topology.Ensure(ctx, ajs, topology.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{forq.SubjectTasksPrefix + "q", forq.SubjectDeadPrefix + "q"} {
		if _, err := ajs.Publish(ctx, subj, []byte("x")); err != nil {
			t.Fatalf("admin publishes to %s: %v", subj, err)
		}
	}
	count := func(stream string) uint64 {
		t.Helper()
		st, err := ajs.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("admin looks up %s: %v", stream, err)
		}
		return st.CachedInfo().State.Msgs
	}

	var pv violations
	pjs, _ := jetstream.New(connectAs(t, s, creds, broker.RoleProducer, &pv))
	refused(t, &pv, "producer creates a consumer", "$JS.API.CONSUMER.CREATE.FORQ_TASKS.sneak.forq.tasks.q", func(ctx context.Context) error {
		_, err := pjs.CreateConsumer(ctx, forq.StreamTasks, jetstream.ConsumerConfig{Durable: "sneak", FilterSubject: forq.SubjectTasksPrefix + "q"})
		return err
	})
	refused(t, &pv, "producer pulls the queue's consumer", "$JS.API.CONSUMER.MSG.NEXT.FORQ_TASKS.q", func(ctx context.Context) error {
		_, err := ajs.CreateConsumer(ctx, forq.StreamTasks, jetstream.ConsumerConfig{Durable: "q", FilterSubject: forq.SubjectTasksPrefix + "q", AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatalf("admin creates a consumer: %v", err)
		}
		// A pull request, as a worker's puller sends it.
		_, err = pjs.Conn().RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT.FORQ_TASKS.q", []byte(`{"batch":1,"expires":1000000000}`))
		return err
	})
	refused(t, &pv, "producer purges the tasks", "$JS.API.STREAM.PURGE.FORQ_TASKS", func(ctx context.Context) error {
		return purge(ctx, pjs, forq.StreamTasks)
	})
	refused(t, &pv, "producer deletes the tasks' stream", "$JS.API.STREAM.DELETE.FORQ_TASKS", func(ctx context.Context) error {
		return pjs.DeleteStream(ctx, forq.StreamTasks)
	})

	var wv violations
	wjs, _ := jetstream.New(connectAs(t, s, creds, broker.RoleWorker, &wv))
	refused(t, &wv, "worker deletes the tasks' stream", "$JS.API.STREAM.DELETE.FORQ_TASKS", func(ctx context.Context) error {
		return wjs.DeleteStream(ctx, forq.StreamTasks)
	})
	refused(t, &wv, "worker purges the dead letters", "$JS.API.STREAM.PURGE.FORQ_DEAD", func(ctx context.Context) error {
		return purge(ctx, wjs, forq.StreamDead)
	})
	refused(t, &wv, "worker deletes a dead letter", "$JS.API.STREAM.MSG.DELETE.FORQ_DEAD", func(ctx context.Context) error {
		st, err := wjs.Stream(ctx, forq.StreamDead)
		if err != nil {
			t.Fatalf("worker looks up %s: %v", forq.StreamDead, err)
		}
		return st.DeleteMsg(ctx, 1)
	})
	if n := count(forq.StreamTasks); n != 1 {
		t.Errorf("%s holds %d tasks after the refused operations, want 1", forq.StreamTasks, n)
	}
	if n := count(forq.StreamDead); n != 1 {
		t.Errorf("%s holds %d dead letters after the refused operations, want 1", forq.StreamDead, n)
	}

	// The admin can do all of it.
	if err := purge(ctx, ajs, forq.StreamDead); err != nil {
		t.Errorf("admin purges the dead letters: %v", err)
	}
	if err := ajs.DeleteStream(ctx, forq.StreamTasks); err != nil {
		t.Errorf("admin deletes the tasks' stream: %v", err)
	}

	// sys is in the system account: it pings the servers, and sees none
	// of forq's streams.
	sys := connectAs(t, s, creds, broker.RoleSystem, nil)
	m, err := sys.RequestWithContext(ctx, "$SYS.REQ.SERVER.PING", nil)
	if err != nil {
		t.Fatalf("sys pings the servers: %v", err)
	}
	if !strings.Contains(string(m.Data), `"server"`) {
		t.Errorf("server ping answered %.200s", m.Data)
	}
	sjs, _ := jetstream.New(sys)
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	if _, err := sjs.Stream(sctx, forq.StreamDead); err == nil {
		t.Error("sys sees forq's dead letters")
	}
}

// The credentials are created once, readable by their owner only, and
// reused by the next broker on the directory; a seed others may read is
// refused.
func TestCredentialsKeptAcrossRestarts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	data := t.TempDir()
	s, err := broker.New(broker.Options{DataDir: data, CredentialsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o700 {
		t.Errorf("credentials directory mode %04o, want 0700", fi.Mode().Perm())
	}
	seeds := map[string][]byte{}
	for _, role := range broker.Roles {
		f := broker.SeedFile(dir, role)
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", f, fi.Mode().Perm())
		}
		seeds[role], _ = os.ReadFile(f)
		if !strings.HasPrefix(string(seeds[role]), "SU") {
			t.Errorf("%s does not hold a user nkey seed: %.2s...", f, seeds[role])
		}
	}
	s, err = broker.New(broker.Options{DataDir: data, CredentialsDir: dir})
	if err != nil {
		t.Fatalf("second broker on the directory: %v", err)
	}
	s.Shutdown()
	for _, role := range broker.Roles {
		if b, _ := os.ReadFile(broker.SeedFile(dir, role)); string(b) != string(seeds[role]) {
			t.Errorf("%s's seed changed across restarts", role)
		}
	}

	if runtime.GOOS != "windows" {
		if err := os.Chmod(broker.SeedFile(dir, broker.RoleWorker), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = broker.New(broker.Options{DataDir: data, CredentialsDir: dir})
		if err == nil || !strings.Contains(err.Error(), "worker.nk") || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("a seed others may read: got %v, want an error naming worker.nk and chmod 600", err)
		}
	}
	_, err = broker.New(broker.Options{DataDir: data, CredentialsDir: dir, Token: "t"})
	if err == nil || !strings.Contains(err.Error(), "excludes") {
		t.Errorf("credentials and a token: got %v, want refused", err)
	}
}
