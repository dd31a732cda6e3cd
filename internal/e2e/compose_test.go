package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq/admin"
)

// TestDockerCompose runs docker-compose.yml as the README says: the image
// built FROM scratch around a static forq binary, then a plain "up -d",
// which starts the broker and the workers but not the example producer
// (it is in a profile). The workers' healthcheck (forq health on the
// pool's /readyz) passes; the producer, run on its own, gets its echo task
// back through the workers, which forq stats shows under their FORQ_NAME
// rather than the container's ID. Then the pool, PID 1 of its container,
// is SIGKILLed: its restart policy brings it back, and it runs tasks
// again. It needs a Docker daemon and docker-compose (or "docker
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
	began := time.Now()
	// Registered first, so it runs last: after docker-compose down.
	t.Cleanup(func() {
		figuref(t, "the whole test, docker-compose down included: %s", time.Since(began).Round(time.Second))
	})

	image, bin := composeImage(t, ctx, "forq-e2e")
	built := time.Since(began)

	token := make([]byte, 16)
	_, _ = rand.Read(token)
	port := composeFreePort(t)
	env := []string{
		"FORQ_IMAGE=" + image,
		"FORQ_TOKEN=" + hex.EncodeToString(token),
		"FORQ_HOST_PORT=" + strconv.Itoa(port),
	}
	// forq on the host, as an operator runs it against the stack.
	hostEnv := []string{"FORQ_URL=nats://127.0.0.1:" + strconv.Itoa(port), "FORQ_TOKEN=" + hex.EncodeToString(token), "FORQ_CONNECT_TIMEOUT=10s"}
	project := "forqe2e" + strconv.Itoa(os.Getpid())
	base := slices.Concat(compose, []string{"-p", project, "-f", filepath.Join(root, "docker-compose.yml")})
	t.Cleanup(func() {
		args := append(append([]string{}, base...), "--profile", "example", "down", "-v", "--remove-orphans", "--timeout", "5")
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("docker-compose down: %v\n%s", err, out)
		}
	})
	dc := func(args ...string) string { return composeRun(t, ctx, env, slices.Concat(base, args)...) }

	upStart := time.Now()
	dc("up", "-d", "--no-build")
	upTook := time.Since(upStart)
	if got := composeServices(t, ctx, project); !slices.Equal(got, []string{"broker", "workers"}) {
		t.Errorf("a plain docker-compose up -d made containers of %v, want [broker workers] (the producer is in the example profile)", got)
	}
	workers := composeContainer(t, ctx, project, "workers")
	healthy := composeHealthy(t, ctx, workers) + upTook

	producerStart := time.Now()
	out := dc("--profile", "example", "run", "--rm", "-T", "producer")
	producerTook := time.Since(producerStart)
	if !strings.Contains(out, "hello from the producer container") {
		t.Errorf("the producer's output lacks its task's result:\n%s", tail(out, 3000))
	}
	composeHostNames(t, ctx, bin, hostEnv)

	// SIGKILL the pool, the container's PID 1, from the host: "docker
	// kill" would count as stopped by hand, which no policy restarts.
	pid := composeInspect(t, ctx, workers, "{{.State.Pid}}")
	n, _ := strconv.Atoi(pid)
	if n <= 1 {
		t.Fatalf("the workers container's PID is %q", pid)
	}
	killed := time.Now()
	if err := syscall.Kill(n, syscall.SIGKILL); errors.Is(err, syscall.EPERM) {
		t.Skipf("SIGKILL the pool (host PID %d, uid 65532): %v: the restart needs a test run as root", n, err)
	} else if err != nil {
		t.Fatalf("SIGKILL the pool (host PID %d): %v", n, err)
	}
	for {
		st := composeInspect(t, ctx, workers, "{{.RestartCount}} {{.State.Running}} {{.State.Pid}}")
		if f := strings.Fields(st); len(f) == 3 && f[0] != "0" && f[1] == "true" && f[2] != pid {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the SIGKILLed pool's container was not restarted: %s", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	restartTook := time.Since(killed)
	code, res, errs := composeHostForq(ctx, bin, hostEnv, "enqueue", "echo", "--payload", "after the restart", "--wait", "--wait-timeout", "60s")
	if code != 0 || !strings.Contains(res, "after the restart") {
		t.Errorf("a task after the restart: exit %d, stdout %q, stderr %q", code, res, errs)
	}
	doneTook := time.Since(killed)
	logs := dc("logs", "--no-color")
	for _, want := range []string{"worker started", "forq broker: NATS with JetStream"} {
		if !strings.Contains(logs, want) {
			t.Errorf("docker-compose logs lacks %q:\n%s", want, tail(logs, 3000))
		}
	}
	figuref(t, "binary and image built in %s; up -d took %s, the workers healthy %s after its start; the producer's run %s; the SIGKILLed pool running again after %s, its first task done after %s; the test so far %s",
		built.Round(time.Millisecond), upTook.Round(time.Millisecond), healthy.Round(time.Millisecond), producerTook.Round(time.Millisecond),
		restartTook.Round(time.Millisecond), doneTook.Round(time.Millisecond), time.Since(began).Round(time.Second))
}

// composeServices returns the services of project that have a container,
// running or not, sorted.
func composeServices(t *testing.T, ctx context.Context, project string) []string {
	t.Helper()
	out := composeRun(t, ctx, nil, "docker", "ps", "-a", "--filter", "label=com.docker.compose.project="+project,
		"--format", `{{.Label "com.docker.compose.service"}}`)
	got := strings.Fields(out)
	slices.Sort(got)
	return slices.Compact(got)
}

// composeContainer returns the ID of the container of service in project.
func composeContainer(t *testing.T, ctx context.Context, project, service string) string {
	t.Helper()
	out := strings.Fields(composeRun(t, ctx, nil, "docker", "ps", "-a", "-q", "--filter", "label=com.docker.compose.project="+project,
		"--filter", "label=com.docker.compose.service="+service))
	if len(out) != 1 {
		t.Fatalf("service %s: containers %v, want one", service, out)
	}
	return out[0]
}

// composeInspect returns what docker inspect's format says of container.
func composeInspect(t *testing.T, ctx context.Context, container, format string) string {
	t.Helper()
	return strings.TrimSpace(composeRun(t, ctx, nil, "docker", "inspect", "-f", format, container))
}

// composeHealthy waits until container's healthcheck passes and returns
// how long that took.
func composeHealthy(t *testing.T, ctx context.Context, container string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		st := composeInspect(t, ctx, container, "{{.State.Health.Status}}")
		if st == "healthy" {
			return time.Since(start)
		}
		if ctx.Err() != nil {
			t.Fatalf("container %s: health %q: %s", container, st,
				composeInspect(t, context.Background(), container, "{{json .State.Health}}"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// composeHostNames checks that forq stats, run on the host, lists the
// workers of the compose stack under the name docker-compose.yml gives
// them (FORQ_NAME), not their container's ID.
func composeHostNames(t *testing.T, ctx context.Context, bin string, hostEnv []string) {
	t.Helper()
	code, out, errs := composeHostForq(ctx, bin, hostEnv, "stats", "--json")
	var st admin.Stats
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("forq stats --json: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	var hosts []string
	for _, w := range st.Workers {
		hosts = append(hosts, w.Host)
	}
	if !slices.Equal(hosts, []string{"workers", "workers"}) {
		t.Errorf("forq stats lists workers on %v, want the 2 workers on \"workers\"", hosts)
	}
}

// composeHostForq runs the forq binary built for the image on the host,
// with env, and returns its exit code, stdout and stderr.
func composeHostForq(ctx context.Context, bin string, env []string, args ...string) (int, string, string) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil && cmd.ProcessState == nil {
		return -1, "", err.Error()
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// composeImage builds what the README's build step does: a static forq
// binary, and the image FROM scratch around it from the repository's
// Dockerfile (no image is pulled). It returns the image's tag, name plus
// this process's PID, removed when the test ends, and the path of the
// binary, which runs on the host too.
func composeImage(t *testing.T, ctx context.Context, name string) (image, bin string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	// The build context holds what the README's build step leaves in the
	// repository root: the Dockerfile, .dockerignore and the forq binary.
	bctx := t.TempDir()
	bin = filepath.Join(bctx, "forq")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/forq")
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
	image = name + ":" + strconv.Itoa(os.Getpid())
	composeRun(t, ctx, nil, "docker", "build", "-q", "-t", image, bctx)
	t.Cleanup(func() {
		_ = exec.Command("docker", "rmi", "-f", image).Run()
	})
	return image, bin
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
