package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
)

// refuses runs forq with args, which must fail at once: exit 1 within a few
// seconds (not after a 10 s readiness wait) with a message holding every
// one of want. It returns the message.
func refuses(t *testing.T, args []string, want ...string) string {
	t.Helper()
	began := time.Now()
	code, out, errs := run(t, nil, nil, args...)
	took := time.Since(began)
	figuref(t, "forq %s: exit %d after %s: %s", strings.Join(args, " "), code, took.Round(time.Millisecond), strings.TrimSpace(errs))
	if code != 1 {
		t.Errorf("forq %v: exit code %d, want 1; stdout %q stderr %q", args, code, out, errs)
	}
	for _, w := range want {
		if !strings.Contains(errs, w) {
			t.Errorf("forq %v: stderr %q does not say %q", args, errs, w)
		}
	}
	if took > 5*time.Second {
		t.Errorf("forq %v took %s to fail, want at once (under 5s)", args, took)
	}
	return errs
}

// Two brokers on one data directory lose each other's acknowledged tasks
// (issue 14, point 1), so the second refuses, naming the first one's PID;
// so does "forq run". The first keeps serving, and what was enqueued to it
// is all there after it restarts, gracefully and after a SIGKILL (whose
// lock file, left behind, must not block the next broker).
func TestSecondBrokerOnOneDataDirRefuses(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, dir, 0)
	pid := strconv.Itoa(b.cmd.Process.Pid)
	refuses(t, []string{"broker", "--data-dir", dir, "--port", strconv.Itoa(freePort(t))}, "data directory in use", "PID "+pid)
	refuses(t, []string{"run", "--data-dir", dir, "--port", strconv.Itoa(freePort(t))}, "data directory in use", "PID "+pid)

	env := []string{"FORQ_URL=" + b.url, "FORQ_QUEUE=lockq"}
	p := start(t, "producer", env, "-n", "20")
	if code := p.wait(60 * time.Second); code != 0 {
		t.Fatalf("producer exit code %d, want 0", code)
	}
	if n := len(p.lines("enqueued ")); n != 20 {
		t.Fatalf("producer enqueued %d tasks, want 20", n)
	}
	// A second try while the first broker holds acknowledged tasks.
	refuses(t, []string{"broker", "--data-dir", dir, "--port", strconv.Itoa(freePort(t))}, "PID "+pid)
	if n := streamMsgs(t, b.js(t), forq.StreamTasks, wire.TaskSubject("lockq")); n != 20 {
		t.Fatalf("first broker holds %d tasks of lockq, want 20", n)
	}

	b.signal(syscall.SIGTERM)
	if code := b.wait(20 * time.Second); code != 0 {
		t.Fatalf("broker exit code %d after SIGTERM, want 0", code)
	}
	b = startBroker(t, dir, b.port)
	n := streamMsgs(t, b.js(t), forq.StreamTasks, wire.TaskSubject("lockq"))
	figuref(t, "after a graceful restart: %d of 20 tasks", n)
	if n != 20 {
		t.Fatalf("after a graceful restart the queue holds %d tasks, want 20", n)
	}

	b.signal(syscall.SIGKILL)
	b.wait(20 * time.Second)
	if lf, err := os.ReadFile(filepath.Join(dir, "broker.lock")); err == nil {
		figuref(t, "lock file left by the killed broker: %q", strings.TrimSpace(string(lf)))
	}
	b = startBroker(t, dir, b.port)
	n = streamMsgs(t, b.js(t), forq.StreamTasks, wire.TaskSubject("lockq"))
	figuref(t, "after a SIGKILL and restart: %d of 20 tasks", n)
	if n != 20 {
		t.Fatalf("after a SIGKILL and restart the queue holds %d tasks, want 20", n)
	}
}

// A broker that cannot start says why at once and exits 1 (issue 14,
// point 9): not "not ready within 10s" with the cause only in --log.
func TestBrokerStartFailuresNameTheirCause(t *testing.T) {
	t.Run("port in use", func(t *testing.T) {
		b := startBroker(t, "", 0)
		refuses(t, []string{"broker", "--data-dir", t.TempDir(), "--port", strconv.Itoa(b.port)}, "address already in use", strconv.Itoa(b.port))
		refuses(t, []string{"run", "--data-dir", t.TempDir(), "--port", strconv.Itoa(b.port)}, "address already in use")
	})
	t.Run("monitoring port in use", func(t *testing.T) {
		b := startBroker(t, "", 0)
		refuses(t, []string{"broker", "--data-dir", t.TempDir(), "--port", strconv.Itoa(freePort(t)), "--http-port", strconv.Itoa(b.port)}, "monitor", "address already in use")
	})
	t.Run("data directory is a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		refuses(t, []string{"broker", "--data-dir", f, "--port", strconv.Itoa(freePort(t))}, f, "not a directory")
		refuses(t, []string{"broker", "--data-dir", filepath.Join(f, "data"), "--port", strconv.Itoa(freePort(t))}, "not a directory")
	})
	t.Run("read-only file system", func(t *testing.T) {
		mnt := t.TempDir()
		if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
			t.Skipf("cannot mount a read-only tmpfs (needs root or CAP_SYS_ADMIN): %v", err)
		}
		t.Cleanup(func() {
			if err := syscall.Unmount(mnt, 0); err != nil {
				t.Errorf("unmount %s: %v", mnt, err)
			}
		})
		refuses(t, []string{"broker", "--data-dir", mnt, "--port", strconv.Itoa(freePort(t))}, mnt, "not writable", "read-only file system")
		refuses(t, []string{"broker", "--data-dir", filepath.Join(mnt, "data"), "--port", strconv.Itoa(freePort(t))}, "read-only file system")
	})
	t.Run("full disk", func(t *testing.T) {
		mnt := tmpfs(t, "4m")
		fill(t, filepath.Join(mnt, "filler"))
		refuses(t, []string{"broker", "--data-dir", filepath.Join(mnt, "data"), "--port", strconv.Itoa(freePort(t))}, "storage full", "free some space")
	})
	t.Run("no write permission", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("running as root, which writes whatever the permissions say; the read-only file system case covers this")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		refuses(t, []string{"broker", "--data-dir", dir, "--port", strconv.Itoa(freePort(t))}, dir, "not writable", "permission denied")
	})
}
