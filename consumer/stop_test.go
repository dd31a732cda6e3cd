//go:build linux

package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
)

// Abort hands running tasks back at once, telling their handlers why, and
// Run returns without waiting out the grace: an exec task whose command
// ignores SIGTERM is killed after the short abort grace, not KillGrace.
// Another worker then gets both tasks at once (the ack wait is a minute).
func TestAbortHandsBackAtOnce(t *testing.T) {
	b := setup(t)
	const q = "abort"
	w := newWorker(t, b, consumer.Config{Queues: []string{q}, Concurrency: 2, Grace: time.Minute, AckWait: time.Minute})
	causes := make(chan error, 1)
	started := make(chan struct{}, 2)
	w.HandleFunc("wait", func(ctx context.Context, _ *consumer.Task) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	w.Handle(forq.TypeExec, consumer.ExecHandler(consumer.ExecConfig{Allow: true, KillGrace: 30 * time.Second}))
	w.Abort(consumer.ErrSupervisorGone) // before Run: nothing to abort

	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(context.Background()) }()
	pidFile := filepath.Join(t.TempDir(), "pid")
	spec, err := json.Marshal(forq.ExecSpec{Argv: []string{"sh", "-c", `trap '' TERM; echo $$ > "$0"; sleep 30`, pidFile}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, task := range []forq.Task{{Type: "wait", Queue: q, Record: true}, {Type: forq.TypeExec, Queue: q, Payload: spec, Record: true}} {
		info, err := b.p.Enqueue(t.Context(), task)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	<-started
	var pgid int
	deadline := time.Now().Add(10 * time.Second)
	for pgid == 0 && time.Now().Before(deadline) {
		data, _ := os.ReadFile(pidFile)
		pgid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		time.Sleep(10 * time.Millisecond)
	}
	if pgid == 0 {
		t.Fatal("the exec task's command never started")
	}

	aborted := time.Now()
	w.Abort(consumer.ErrSupervisorGone)
	w.Abort(consumer.ErrSupervisorGone) // twice is harmless
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of Abort (grace 1m, exec kill grace 30s)")
	}
	took := time.Since(aborted)
	if took > 5*time.Second {
		t.Errorf("Run returned %s after Abort; want about the exec abort grace (%s)", took, consumer.DefaultExecAbortGrace)
	}
	if live := groupLive(pgid); len(live) > 0 {
		t.Errorf("the exec command's process group %d still has live processes %v after Run returned", pgid, live)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	cause := <-causes
	if !errors.Is(cause, consumer.ErrAborted) || !errors.Is(cause, consumer.ErrSupervisorGone) {
		t.Errorf("handler's cause %v: want one wrapping ErrAborted and ErrSupervisorGone", cause)
	}
	for _, id := range ids {
		r, err := b.p.Result(t.Context(), id)
		if err != nil || r.State != forq.StateQueued {
			t.Errorf("task %s after the abort: %+v, %v; want queued (handed back)", id, r, err)
		}
	}

	w2 := newWorker(t, b, consumer.Config{Queues: []string{q}, Concurrency: 2})
	w2.HandleFunc("wait", func(context.Context, *consumer.Task) ([]byte, error) { return []byte("ok"), nil })
	w2.HandleFunc(forq.TypeExec, func(context.Context, *consumer.Task) ([]byte, error) { return []byte("ok"), nil })
	second := time.Now()
	start(t, w2)
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		r, err := b.p.Wait(ctx, id)
		cancel()
		if err != nil || r.State != forq.StateSucceeded {
			t.Fatalf("task %s on a second worker: %+v, %v; want succeeded long before the 1m ack wait", id, r, err)
		}
	}
	t.Logf("Run returned %s after Abort; a second worker completed both tasks in %s", took.Round(time.Millisecond), time.Since(second).Round(time.Millisecond))
}

// A SIGTERM is a normal stop: StopContext is canceled with a cause naming
// the signal, and no supervisor death is reported (the test binary has no
// parent-death signal).
func TestStopContextSignal(t *testing.T) {
	ctx, stop := consumer.StopContext(context.Background())
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not cancel the context")
	}
	if cause := context.Cause(ctx); !errors.Is(cause, consumer.ErrStopSignal) || !strings.Contains(cause.Error(), "terminated") {
		t.Errorf("cause %v: want ErrStopSignal naming the signal", cause)
	}
	select {
	case <-consumer.SupervisorGone(ctx):
		t.Error("SupervisorGone closed on a normal stop")
	case <-time.After(100 * time.Millisecond):
	}
	if consumer.SupervisorGone(context.Background()) != nil {
		t.Error("SupervisorGone of a context without StopContext is not nil")
	}
	stop()
	stop()
	if got := fmt.Sprint(context.Cause(ctx)); !strings.Contains(got, "terminated") {
		t.Errorf("stop changed the cause to %q", got)
	}
}

// groupLive returns the PIDs of the processes of group pgid that have not
// exited (zombies, exited and not yet reaped, are not counted).
func groupLive(pgid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}
