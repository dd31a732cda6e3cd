package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq/internal/testutil"
)

// The forq commands themselves, each with the least credential its job
// needs, against "forq broker --credentials-dir" serving TLS: the admin
// declares the queue's consumers with forq init; a worker
// runs what a producer enqueued and the producer gets the result; the
// producer may not purge the dead letters, the admin may; a command
// without a credential is refused.
func TestRolesRunForqCommands(t *testing.T) {
	p := testutil.NewPKI(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	_, url := startBrokerArgs(t, filepath.Join(dir, "data"), "tls",
		"--tls-cert", p.ServerCert, "--tls-key", p.ServerKey, "--credentials-dir", creds)
	as := func(role string) []string {
		env := []string{"FORQ_URL=" + url, "FORQ_TLS_CA=" + p.CA}
		if role != "" {
			env = append(env, "FORQ_NKEY="+filepath.Join(creds, role+".nk"))
		}
		return env
	}
	if code, out, errs := run(t, nil, as("admin"), "init", "--queue", "roles"); code != 0 {
		t.Fatalf("forq init as admin: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	start(t, "forq", as("worker"), "work", "--queue", "roles", "--grace", "100ms")

	began := time.Now()
	code, out, errs := run(t, nil, as("producer"), "enqueue", "echo", "--queue", "roles", "--payload", "least privilege", "--wait")
	if code != 0 || !strings.Contains(out, "least privilege") {
		t.Fatalf("forq enqueue --wait as producer: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	figuref(t, "enqueue --wait as producer, run by a worker, over TLS: %s", time.Since(began).Round(time.Millisecond))

	code, out, errs = run(t, nil, as("producer"), "enqueue", "echo", "--queue", "roles", "--payload", "again", "--record")
	if code != 0 {
		t.Fatalf("forq enqueue as producer: exit %d, stderr %q", code, errs)
	}
	id := strings.TrimSpace(out)
	if code, out, errs := run(t, nil, as("producer"), "result", id, "--wait", "--wait-timeout", "30s"); code != 0 || !strings.Contains(out, "again") {
		t.Errorf("forq result --wait as producer: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	if code, _, errs := run(t, nil, as("producer"), "dead", "purge", "--all", "--yes"); code == 0 || !strings.Contains(errs, "Permissions Violation") {
		t.Errorf("forq dead purge as producer: exit %d, stderr %q; want a permissions violation", code, errs)
	} else {
		t.Logf("forq dead purge as producer: exit %d: %s", code, strings.TrimSpace(errs))
	}
	if code, _, errs := run(t, nil, as("admin"), "dead", "purge", "--all", "--yes"); code != 0 {
		t.Errorf("forq dead purge as admin: exit %d: %s", code, errs)
	}
	if code, _, errs := run(t, nil, as(""), "stats"); code == 0 || !strings.Contains(errs, "credentials") {
		t.Errorf("forq stats without a credential: exit %d, stderr %q; want refused", code, errs)
	}
}
