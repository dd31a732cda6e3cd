package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq/internal/testutil"
)

// forq enqueue --wait and forq pool reach a broker with TLS that verifies
// client certificates and takes only nkey users, given the CA, the client
// certificate and key and the nkey seed by the environment alone. The
// pool's forq work children get them by the environment too: none of the
// seed, the key or their files is on a child's command line (which ps
// shows), and the seed's file is in its environment. Without the CA, the
// refusal names --tls-ca and FORQ_TLS_CA.
func TestTLSAndNKeyByEnvironment(t *testing.T) {
	pki := testutil.NewPKI(t)
	seedFile, pub := testutil.NKeyUser(t)
	url := testutil.SecureBroker(t, testutil.Secure{TLS: pki, VerifyClients: true, NKeys: []string{pub}})
	seed, err := os.ReadFile(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{
		"FORQ_URL=" + url,
		"FORQ_TLS_CA=" + pki.CA,
		"FORQ_TLS_CERT=" + pki.ClientCert,
		"FORQ_TLS_KEY=" + pki.ClientKey,
		"FORQ_NKEY=" + seedFile,
		"FORQ_CONNECT_TIMEOUT=20s",
	}

	pool := start(t, "forq", env, "pool", "-n", "2", "--queue", "secured")
	eventually(t, 30*time.Second, func() bool { return len(childPIDs(pool.cmd.Process.Pid)) == 2 }, "the pool did not start its 2 workers:\n%s", tail(pool.stderr(), 2000))

	start := time.Now()
	code, out, errs := run(t, nil, env, "enqueue", "echo", "--queue", "secured", "--payload", "through TLS and an nkey", "--wait")
	if code != 0 || !strings.Contains(out, "through TLS and an nkey") {
		t.Fatalf("forq enqueue --wait: exit %d, stdout %q, stderr %q; want 0 and the echoed payload\npool:\n%s", code, out, errs, tail(pool.stderr(), 2000))
	}
	figuref(t, "enqueue --wait over TLS with an nkey, through a pool: %s", time.Since(start).Round(time.Millisecond))

	secrets := map[string][]byte{
		"the nkey seed":         bytes.TrimSpace(seed),
		"the client key":        key,
		"the seed's file":       []byte(seedFile),
		"the client key's file": []byte(pki.ClientKey),
		"the CA's file":         []byte(pki.CA),
	}
	for _, pid := range childPIDs(pool.cmd.Process.Pid) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Fatalf("the command line of worker %d: %v", pid, err)
		}
		if !bytes.Contains(cmdline, []byte("work")) {
			t.Errorf("worker %d's command line %q is not forq work", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
		for what, s := range secrets {
			if bytes.Contains(cmdline, s) || bytes.Contains(cmdline, bytes.TrimSpace(s)) {
				t.Errorf("worker %d's command line holds %s: %q", pid, what, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
			}
		}
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatalf("the environment of worker %d: %v", pid, err)
		}
		if !bytes.Contains(environ, []byte("\x00FORQ_NKEY="+seedFile+"\x00")) {
			t.Errorf("worker %d's environment has no FORQ_NKEY=%s", pid, seedFile)
		}
	}

	// Without the CA, this host does not trust the broker's certificate.
	noCA := append([]string(nil), env...)
	noCA[1] = "FORQ_TLS_CA="
	code, _, errs = run(t, nil, noCA, "enqueue", "echo", "--queue", "secured", "--payload", "x")
	if code != 1 || !strings.Contains(errs, "--tls-ca / FORQ_TLS_CA") {
		t.Errorf("forq enqueue without the CA: exit %d, stderr %q; want 1 naming --tls-ca / FORQ_TLS_CA", code, errs)
	}
	// Without the seed, the broker refuses us.
	noSeed := append([]string(nil), env...)
	noSeed[4] = "FORQ_NKEY="
	code, _, errs = run(t, nil, noSeed, "enqueue", "echo", "--queue", "secured", "--payload", "x")
	if code != 1 || !strings.Contains(errs, "refused our credentials") || !strings.Contains(errs, "--nkey") || !strings.Contains(errs, "--creds") {
		t.Errorf("forq enqueue without the nkey: exit %d, stderr %q; want 1, a refusal naming --nkey and --creds", code, errs)
	}
	// A missing seed file is named.
	noFile := append([]string(nil), env...)
	gone := filepath.Join(t.TempDir(), "gone.nk")
	noFile[4] = "FORQ_NKEY=" + gone
	code, _, errs = run(t, nil, noFile, "enqueue", "echo", "--queue", "secured", "--payload", "x")
	if code != 2 || !strings.Contains(errs, gone) {
		t.Errorf("forq enqueue with a missing seed file: exit %d, stderr %q; want 2 naming %s", code, errs, gone)
	}
}

// A worker of the user's own, started by forq pool -- ./worker, gets the
// pool's .creds file and CA by the environment and connects with
// connect.FromEnv, as does the example producer: a broker in operator
// (JWT) mode with TLS runs their tasks.
func TestUserWorkerGetsCredsByEnvironment(t *testing.T) {
	pki := testutil.NewPKI(t)
	op := testutil.NewOperator(t)
	url := testutil.SecureBroker(t, testutil.Secure{TLS: pki, Operator: op})
	creds := op.CredsFile(t)
	env := []string{"FORQ_URL=" + url, "FORQ_TLS_CA=" + pki.CA, "FORQ_CREDS=" + creds, "FORQ_CONNECT_TIMEOUT=20s"}

	pool := start(t, "forq", env, "pool", "-n", "1", "-q", "words", "--", bin["worker"])
	p := start(t, "producer", env, "-n", "3", "--wait")
	if code := p.wait(60 * time.Second); code != 0 {
		t.Fatalf("the example producer: exit %d\n%s\npool:\n%s", code, tail(p.stderr(), 2000), tail(pool.stderr(), 2000))
	}
	if got := strings.Count(p.stdout(), " succeeded "); got != 3 {
		t.Fatalf("the example producer printed %d succeeded results, want 3:\n%s\npool:\n%s", got, p.stdout(), tail(pool.stderr(), 2000))
	}
	for _, pid := range childPIDs(pool.cmd.Process.Pid) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(cmdline, []byte(creds)) {
			t.Errorf("the user's worker %d has the .creds file on its command line: %q", pid, cmdline)
		}
	}

	// Without the .creds file, the example producer is refused, and says so.
	noCreds := append([]string(nil), env[:2]...)
	q := start(t, "producer", noCreds, "-n", "1")
	code := q.wait(30 * time.Second)
	if code == 0 || !strings.Contains(q.stderr(), "refused our credentials") {
		t.Errorf("the example producer without the .creds file: exit %d, stderr %q; want a refusal", code, q.stderr())
	}
}
