package broker

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, o Options) *Server {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Shutdown)
	s.Start()
	if err := s.WaitReady(10 * time.Second); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	return s
}

// One data directory takes one broker, in one process or in two; Shutdown
// hands it over.
func TestDataDirTakesOneBroker(t *testing.T) {
	dir := t.TempDir()
	s := start(t, Options{DataDir: dir})
	_, err := New(Options{DataDir: dir})
	if !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("second New on one data directory: got %v, want ErrDataDirLocked", err)
	}
	if want := "PID " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the holder, %s", err, want)
	}
	t.Logf("second broker: %v", err)
	s.Shutdown()
	s.Shutdown() // twice is safe
	start(t, Options{DataDir: dir})
}

// A port in use fails WaitReady at once with the cause, not after its
// timeout.
func TestWaitReadyNamesTheCause(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := New(Options{DataDir: t.TempDir(), Port: l.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	began := time.Now()
	s.Start()
	err = s.WaitReady(30 * time.Second)
	took := time.Since(began)
	t.Logf("WaitReady after %s: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, ErrStartFailed) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("got %v, want ErrStartFailed naming the port in use", err)
	}
	if took > 10*time.Second {
		t.Errorf("WaitReady took %s, want at once", took)
	}
}

// A data directory that is a file is refused by New, naming it.
func TestNewRefusesAFileAsDataDir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{DataDir: f})
	if err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("got %v, want an error naming %s", err, f)
	}
}
