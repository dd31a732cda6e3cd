package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDockerCompose runs docker-compose.yml as the README says: the image
// built FROM scratch around a static forq binary, then a broker, a pool of
// workers and a producer whose echo task must come back through the
// workers. It needs a Docker daemon and docker-compose (or "docker
// compose"); without them it is skipped.
func TestDockerCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the docker-compose test")
	}
	compose := composeCommand(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// The build context holds what the README's build step leaves in the
	// repository root: the Dockerfile, .dockerignore and the forq binary.
	bctx := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(bctx, "forq"), "./cmd/forq")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build a static forq: %v\n%s", err, out)
	}
	for _, f := range []string{"Dockerfile", ".dockerignore"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bctx, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	image := "forq-e2e:" + strconv.Itoa(os.Getpid())
	composeRun(t, ctx, nil, "docker", "build", "-q", "-t", image, bctx)
	t.Cleanup(func() {
		_ = exec.Command("docker", "rmi", "-f", image).Run()
	})

	token := make([]byte, 16)
	_, _ = rand.Read(token)
	env := []string{
		"FORQ_IMAGE=" + image,
		"FORQ_TOKEN=" + hex.EncodeToString(token),
		"FORQ_HOST_PORT=" + strconv.Itoa(composeFreePort(t)),
	}
	project := "forqe2e" + strconv.Itoa(os.Getpid())
	base := append(compose, "-p", project, "-f", filepath.Join(root, "docker-compose.yml"))
	t.Cleanup(func() {
		args := append(append([]string{}, base...), "down", "-v", "--remove-orphans", "--timeout", "5")
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("docker-compose down: %v\n%s", err, out)
		}
	})

	// up returns when the producer exits, with its exit code, and stops
	// the broker and the workers.
	out := composeRun(t, ctx, env, append(append([]string{}, base...), "up", "--no-build", "--no-color", "--exit-code-from", "producer")...)
	for _, want := range []string{"hello from the producer container", "worker started", "forq broker: NATS with JetStream"} {
		if !strings.Contains(out, want) {
			t.Errorf("docker-compose up output lacks %q:\n%s", want, tail(out, 60))
		}
	}
}

// composeCommand returns how to run Docker Compose here, or skips the test.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("no docker command")
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		t.Skipf("no Docker daemon: docker info: %v", err)
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	t.Skip("neither docker-compose nor docker compose")
	return nil
}

// composeRun runs a command with extra environment and returns its
// combined output; it fails the test if the command fails.
func composeRun(t *testing.T, ctx context.Context, env []string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, tail(out.String(), 60))
	}
	return out.String()
}

// composeFreePort returns a TCP port free on the loopback address.
func composeFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
