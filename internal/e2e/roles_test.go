package e2e

// "forq broker --credentials-dir" and "--tls-*" as an operator runs them,
// checked with the stock nats CLI: each role's credential is an nkey seed
// file that "nats --nkey" takes, and the broker refuses what a role must not
// do.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq/internal/testutil"
)

// startBrokerArgs runs "forq broker" on a free port with its data in dir
// and the extra args, and waits until it reports ready at scheme://.
func startBrokerArgs(t *testing.T, dir, scheme string, args ...string) (*proc, string) {
	t.Helper()
	port := freePort(t)
	p := start(t, "forq", nil, append([]string{"broker", "--data-dir", dir, "--port", strconv.Itoa(port)}, args...)...)
	url := fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
	eventually(t, 20*time.Second, func() bool { return strings.Contains(p.stderr(), "NATS with JetStream at "+url) },
		"broker did not report ready at %s; stdout %q stderr %q", url, p.stdout(), p.stderr())
	return p, url
}

// refusedBy runs nats with args, which must fail because the broker
// refused the role a permission on subject.
func refusedBy(t *testing.T, n *natsCLI, subject string, args ...string) {
	t.Helper()
	out, err := n.try(t, append([]string{"--timeout", "2s"}, args...)...)
	if err == nil {
		t.Errorf("nats %s: succeeded, want refused; output:\n%s", strings.Join(args, " "), out)
		return
	}
	if !strings.Contains(out, `Permissions Violation for Publish to "`+subject+`"`) {
		t.Errorf("nats %s: %v, want a permissions violation on %s; output:\n%s", strings.Join(args, " "), err, subject, out)
	}
}

// The broker generates a credential per role once, mode 0600, and keeps
// it across restarts; with them the nats CLI connects, each role is
// refused what it must not do, and the system credential shows the
// server reports.
func TestBrokerRolesWithNatsCLI(t *testing.T) {
	n := newNatsCLI(t)
	dir := t.TempDir()
	data, creds := filepath.Join(dir, "data"), filepath.Join(dir, "creds")
	b, url := startBrokerArgs(t, data, "nats", "--credentials-dir", creds)
	n.url = url
	if !strings.Contains(b.stderr(), "credentials:    "+creds) {
		t.Errorf("the broker does not say where the credentials are: %q", b.stderr())
	}
	seeds := map[string]string{}
	for _, role := range []string{"producer", "worker", "admin", "sys"} {
		f := filepath.Join(creds, role+".nk")
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatalf("%s credential: %v", role, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", f, fi.Mode().Perm())
		}
		s, _ := os.ReadFile(f)
		seeds[role] = string(s)
	}
	nk := func(role string) string { return "--nkey=" + filepath.Join(creds, role+".nk") }

	if out, err := n.try(t, "stream", "ls"); err == nil || !strings.Contains(out, "Authorization Violation") {
		t.Errorf("nats without a credential: %v, want an authorization violation; output:\n%s", err, out)
	}
	want(t, "admin: nats stream ls", n.run(t, nk("admin"), "stream", "ls"), `FORQ_DEAD`, `FORQ_TASKS`)
	want(t, "sys: nats server report jetstream", n.run(t, nk("sys"), "server", "report", "jetstream"), `JetStream Summary`, `│ \w+ │ │ [1-9]\d* │`)
	want(t, "sys: nats server ls", n.run(t, nk("sys"), "server", "ls"), `Server Overview`, `2\.\d+\.\d+ │ yes`)
	n.run(t, nk("admin"), "pub", "forq.dead.q", "a dead letter")
	n.run(t, nk("producer"), "pub", "forq.tasks.q", "a task")

	refusedBy(t, n, "$JS.API.STREAM.DELETE.FORQ_TASKS", nk("producer"), "stream", "rm", "FORQ_TASKS", "-f")
	refusedBy(t, n, "$JS.API.STREAM.PURGE.FORQ_TASKS", nk("producer"), "stream", "purge", "FORQ_TASKS", "-f")
	refusedBy(t, n, "$JS.API.CONSUMER.CREATE.FORQ_TASKS.sneak.forq.tasks.q", nk("producer"), "consumer", "add", "FORQ_TASKS", "sneak", "--pull", "--filter=forq.tasks.q", "--defaults")
	refusedBy(t, n, "$JS.API.STREAM.DELETE.FORQ_TASKS", nk("worker"), "stream", "rm", "FORQ_TASKS", "-f")
	refusedBy(t, n, "$JS.API.STREAM.PURGE.FORQ_DEAD", nk("worker"), "stream", "purge", "FORQ_DEAD", "-f")
	want(t, "admin: nats stream ls after the refusals", n.run(t, nk("admin"), "stream", "ls"),
		`FORQ_DEAD .* │ 1 `, `FORQ_TASKS .* │ 1 `)

	n.run(t, nk("admin"), "stream", "purge", "FORQ_DEAD", "-f")
	want(t, "admin: nats stream ls after the purge", n.run(t, nk("admin"), "stream", "ls"), `FORQ_DEAD .* │ 0 `)

	// Restarted on the same directory, the broker keeps the credentials.
	b.signal(syscall.SIGTERM)
	if code := b.wait(30 * time.Second); code != 0 {
		t.Fatalf("broker exited %d on SIGTERM", code)
	}
	_, n.url = startBrokerArgs(t, data, "nats", "--credentials-dir", creds)
	for role, s := range seeds {
		if now, _ := os.ReadFile(filepath.Join(creds, role+".nk")); string(now) != s {
			t.Errorf("%s's credential changed across the restart", role)
		}
	}
	want(t, "admin after the restart: nats stream ls", n.run(t, nk("admin"), "stream", "ls"), `FORQ_TASKS .* │ 1 `)
	if code, _, stderr := run(t, nil, nil, "broker", "--data-dir", t.TempDir(), "--port", "0", "--credentials-dir", creds, "--token", "t"); code == 0 || !strings.Contains(stderr, "excludes") {
		t.Errorf("forq broker with --credentials-dir and --token: exit %d, stderr %q; want refused", code, stderr)
	}
}

// A broker serving TLS and verifying client certificates takes the nats
// CLI with the CA, a client certificate and a credential, and refuses it
// without one of them; TLS alone does not let a broker listen beyond
// loopback.
func TestBrokerTLSWithNatsCLI(t *testing.T) {
	n := newNatsCLI(t)
	p := testutil.NewPKI(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	tlsArgs := []string{"--tls-cert", p.ServerCert, "--tls-key", p.ServerKey, "--tls-ca", p.CA, "--tls-verify"}
	_, n.url = startBrokerArgs(t, filepath.Join(dir, "data"), "tls", append(tlsArgs, "--credentials-dir", creds)...)
	admin := "--nkey=" + filepath.Join(creds, "admin.nk")
	ca, cert, key := "--tlsca="+p.CA, "--tlscert="+p.ClientCert, "--tlskey="+p.ClientKey

	want(t, "nats with the CA, a certificate and a credential", n.run(t, ca, cert, key, admin, "stream", "ls"), `FORQ_TASKS`)
	for _, c := range []struct {
		what string
		args []string
	}{
		{"without a client certificate", []string{ca, admin}},
		{"without the CA", []string{cert, key, admin}},
		{"without a credential", []string{ca, cert, key}},
	} {
		if out, err := n.try(t, append(c.args, "--timeout", "2s", "stream", "ls")...); err == nil {
			t.Errorf("nats %s: connected; output:\n%s", c.what, out)
		} else {
			t.Logf("nats %s: %s", c.what, strings.TrimSpace(out))
		}
	}

	code, _, stderr := run(t, nil, nil, append([]string{"broker", "--data-dir", t.TempDir(), "--host", "0.0.0.0", "--port", "0"}, tlsArgs...)...)
	if code == 0 || !strings.Contains(stderr, "not loopback") {
		t.Errorf("forq broker beyond loopback with TLS and no credentials: exit %d, stderr %q; want refused", code, stderr)
	}
}
