//go:build linux

package broker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// tmpfs mounts a tmpfs of size for the test, or skips it when mounting is
// not permitted.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a %s tmpfs to fill (needs root or CAP_SYS_ADMIN): %v", size, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return mnt
}

func startIn(t *testing.T, dir string) (*broker.Server, *producer.Producer) {
	t.Helper()
	s, err := broker.New(broker.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if err := s.WaitReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

func enqueue(t *testing.T, p *producer.Producer, n int, size int) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, err := p.Enqueue(ctx, forq.Task{ID: fmt.Sprintf("t%d", n), Queue: "q", Type: "x", Payload: make([]byte, size)})
	return err
}

// JetStream's storage limit: Enqueue and EnqueueMany fail with
// forq.ErrStorageFull, and so does Health.
func TestStorageLimitIsErrStorageFull(t *testing.T) {
	s, p := startIn(t, filepath.Join(tmpfs(t, "8m"), "data"))
	var err error
	n := 0
	for ; n < 100 && err == nil; n++ {
		err = enqueue(t, p, n, 256<<10)
	}
	t.Logf("enqueue %d of 256 KiB: %v", n, err)
	if !errors.Is(err, forq.ErrStorageFull) {
		t.Fatalf("enqueue past the storage limit: got %v, want forq.ErrStorageFull", err)
	}
	_, err = p.EnqueueMany(t.Context(), []forq.Task{{Queue: "q", Type: "x", Payload: make([]byte, 256<<10)}, {Queue: "q", Type: "x"}})
	t.Logf("EnqueueMany: %v", err)
	if !errors.Is(err, forq.ErrStorageFull) {
		t.Errorf("EnqueueMany past the storage limit: got %v, want forq.ErrStorageFull", err)
	}
	herr := s.Health()
	t.Logf("Health: %v", herr)
	if !errors.Is(herr, forq.ErrStorageFull) || !strings.Contains(herr.Error(), "limit") {
		t.Errorf("Health past the storage limit: got %v, want forq.ErrStorageFull naming the limit", herr)
	}
}

// A full disk: Enqueue fails with forq.ErrStorageFull and Health says
// JetStream is disabled; once space is freed, Health is nil again by
// itself and the tasks acknowledged before are all there.
func TestFullDiskRecovers(t *testing.T) {
	mnt := tmpfs(t, "32m")
	s, p := startIn(t, filepath.Join(mnt, "data"))
	acked := 0
	for ; acked < 50; acked++ {
		if err := enqueue(t, p, acked, 8<<10); err != nil {
			t.Fatal(err)
		}
	}
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	for ; acked < 1000; acked++ {
		if err = enqueue(t, p, acked, 8<<10); err != nil {
			break
		}
	}
	t.Logf("%d tasks acknowledged (50 before the disk filled), then: %v", acked, err)
	if !errors.Is(err, forq.ErrStorageFull) {
		t.Fatalf("enqueue on a full disk: got %v, want forq.ErrStorageFull", err)
	}
	if err := s.Health(); !errors.Is(err, forq.ErrStorageFull) || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("Health on a full disk: got %v, want forq.ErrStorageFull saying JetStream is disabled", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	for s.Health() != nil {
		if time.Since(began) > 20*time.Second {
			t.Fatalf("Health still %v 20s after space was freed", s.Health())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("healthy %s after space was freed", time.Since(began).Round(time.Millisecond))
	if err := enqueue(t, p, 100000, 8<<10); err != nil {
		t.Fatalf("enqueue after space was freed: %v", err)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	info, err := streamMsgs(t, nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s holds %d tasks: %d acknowledged before and on the full disk, 1 after", forq.StreamTasks, info, acked)
	if info != uint64(acked+1) {
		t.Errorf("%s holds %d tasks, want %d", forq.StreamTasks, info, acked+1)
	}
}

func streamMsgs(t *testing.T, nc *nats.Conn) (uint64, error) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		return 0, err
	}
	return st.CachedInfo().State.Msgs, nil
}
