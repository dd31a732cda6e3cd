package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/forqhq/forq/internal/testutil"
)

// forqCmd runs the forq command with args and returns its exit code and
// its stdout and stderr.
func forqCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// The connection flags and their variables reach a broker with TLS that
// verifies clients and takes nkey users; each one missing gets a message
// that names the flag to give.
func TestConnectFlagsTLSAndNKey(t *testing.T) {
	pki := testutil.NewPKI(t)
	seed, pub := testutil.NKeyUser(t)
	url := testutil.SecureBroker(t, testutil.Secure{TLS: pki, VerifyClients: true, NKeys: []string{pub}})
	flags := map[string]string{"--tls-ca": pki.CA, "--tls-cert": pki.ClientCert, "--tls-key": pki.ClientKey, "--nkey": seed}
	args := func(cmd []string, without ...string) []string {
		a := append(slices.Clone(cmd), "--url", url, "--connect-timeout", "10s")
		for f, v := range flags {
			if !slices.Contains(without, f) {
				a = append(a, f, v)
			}
		}
		return a
	}
	if code, out, errs := forqCmd(t, args([]string{"enqueue", "echo", "--payload", "hi"})...); code != ExitOK {
		t.Fatalf("forq enqueue with every flag: exit %d\n%s%s", code, out, errs)
	}
	// The same by the environment alone.
	t.Setenv("FORQ_URL", url)
	t.Setenv("FORQ_TLS_CA", pki.CA)
	t.Setenv("FORQ_TLS_CERT", pki.ClientCert)
	t.Setenv("FORQ_TLS_KEY", pki.ClientKey)
	t.Setenv("FORQ_NKEY", seed)
	code, out, errs := forqCmd(t, "stats")
	if code != ExitOK || !strings.Contains(out, "QUEUED") {
		t.Fatalf("forq stats by FORQ_*: exit %d, want 0 and the queues' table\n%s%s", code, out, errs)
	}
	for _, v := range []string{"FORQ_URL", "FORQ_TLS_CA", "FORQ_TLS_CERT", "FORQ_TLS_KEY", "FORQ_NKEY"} {
		if err := os.Unsetenv(v); err != nil {
			t.Fatal(err)
		}
	}

	for _, c := range []struct {
		without []string
		says    string
	}{
		{[]string{"--tls-ca"}, "give the CA that signed it with --tls-ca / FORQ_TLS_CA"},
		{[]string{"--tls-cert", "--tls-key"}, "a broker that verifies clients needs a client certificate"},
		{[]string{"--nkey"}, "--nkey / FORQ_NKEY with an nkey seed file, or --creds / FORQ_CREDS"},
	} {
		code, _, errs := forqCmd(t, args([]string{"stats"}, c.without...)...)
		if code != ExitError || !strings.Contains(errs, c.says) {
			t.Errorf("forq stats without %s: exit %d, stderr %q; want exit %d saying %q", c.without, code, errs, ExitError, c.says)
		}
	}
	// Both halves of a client certificate, or neither.
	a := args([]string{"stats"}, "--tls-key")
	if code, _, errs := forqCmd(t, a...); code != ExitUsage || !strings.Contains(errs, "--tls-cert / FORQ_TLS_CERT and --tls-key / FORQ_TLS_KEY") {
		t.Errorf("forq stats with --tls-cert alone: exit %d, stderr %q; want a usage error naming both flags", code, errs)
	}
}

// A missing or wrong file is a usage error naming the flag and the path.
func TestConnectFlagsNameTheFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere.creds")
	code, _, errs := forqCmd(t, "stats", "--creds", missing)
	if code != ExitUsage || !strings.Contains(errs, "--creds / FORQ_CREDS") || !strings.Contains(errs, missing) {
		t.Errorf("forq stats --creds %s: exit %d, stderr %q; want a usage error naming --creds and the path", missing, code, errs)
	}
	seed, _ := testutil.NKeyUser(t)
	code, _, errs = forqCmd(t, "stats", "--creds", seed)
	if code != ExitUsage || !strings.Contains(errs, "not a .creds file") || !strings.Contains(errs, seed) {
		t.Errorf("forq stats --creds <an nkey seed>: exit %d, stderr %q; want a usage error saying it is not a .creds file", code, errs)
	}
	code, _, errs = forqCmd(t, "stats", "--token", "t", "--user", "u")
	if code != ExitUsage || !strings.Contains(errs, "--token / FORQ_TOKEN and --user / FORQ_USER") {
		t.Errorf("forq stats --token --user: exit %d, stderr %q; want a usage error naming both", code, errs)
	}
}

// A .creds file reaches a broker in operator (JWT) mode.
func TestConnectFlagsCreds(t *testing.T) {
	op := testutil.NewOperator(t)
	url := testutil.SecureBroker(t, testutil.Secure{Operator: op})
	if code, out, errs := forqCmd(t, "enqueue", "echo", "--payload", "hi", "--url", url, "--creds", op.CredsFile(t)); code != ExitOK {
		t.Fatalf("forq enqueue --creds: exit %d\n%s%s", code, out, errs)
	}
	code, _, errs := forqCmd(t, "stats", "--url", url, "--creds", testutil.StrangerCredsFile(t))
	if code != ExitError || !strings.Contains(errs, "refused our credentials") {
		t.Errorf("forq stats with a stranger's .creds: exit %d, stderr %q; want a refusal", code, errs)
	}
}

// forq <cmd> --help lists the connection flags with their variables.
func TestConnectFlagsInHelp(t *testing.T) {
	for _, cmd := range []string{"enqueue", "work", "pool", "stats", "health"} {
		_, out, _ := forqCmd(t, cmd, "--help")
		for _, want := range []string{"--creds=FILE", "($FORQ_CREDS)", "--nkey=FILE", "($FORQ_NKEY)", "--tls-ca=FILE", "($FORQ_TLS_CA)", "--tls-cert=FILE", "--tls-key=FILE", "--tls-server-name=NAME", "($FORQ_TLS_SERVER_NAME)"} {
			if !strings.Contains(out, want) {
				t.Errorf("forq %s --help does not show %q", cmd, want)
			}
		}
	}
}
