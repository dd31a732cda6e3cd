package connect_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/connect"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// roundTrip enqueues a recorded task on nc, runs a worker on nc that
// echoes it, and checks its result: what a connection to forq is for.
func roundTrip(t *testing.T, nc *nats.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := consumer.New(ctx, nc, consumer.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	w.HandleFunc("echo", func(_ context.Context, t *consumer.Task) ([]byte, error) { return t.Payload, nil })
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()

	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	info, err := p.Enqueue(ctx, forq.Task{Type: "echo", Payload: []byte("over the secured line")}, producer.WithRecord())
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	r, err := p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if r.State != forq.StateSucceeded || string(r.Result) != "over the secured line" {
		t.Fatalf("result %s %q, want succeeded with the payload", r.State, r.Result)
	}
}

// connectOK connects with cfg, expecting success, and closes the
// connection when the test ends.
func connectOK(t *testing.T, cfg connect.Config) *nats.Conn {
	t.Helper()
	cfg.ConnectTimeout = 10 * time.Second
	nc, err := cfg.Connect()
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// refused connects with cfg, expecting an *connect.Error of kind, and
// returns it.
func refused(t *testing.T, cfg connect.Config, kind error) *connect.Error {
	t.Helper()
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	start := time.Now()
	nc, err := cfg.Connect()
	if err == nil {
		nc.Close()
		t.Fatalf("connected with %+v, want %v", cfg, kind)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) || !errors.Is(err, kind) {
		t.Fatalf("error %v (%T), want a *connect.Error of kind %v", err, err, kind)
	}
	// A refusal is final: Connect does not retry it for the whole
	// ConnectTimeout.
	if !errors.Is(kind, connect.ErrUnreachable) && time.Since(start) > cfg.ConnectTimeout/2 {
		t.Errorf("refused after %s: it retried a refusal until ConnectTimeout %s", time.Since(start).Round(time.Millisecond), cfg.ConnectTimeout)
	}
	t.Logf("%v", err)
	return ce
}

// A broker with TLS that verifies client certificates and takes nkey
// users: the right CA, client certificate and seed connect and run a
// task; each missing or wrong part is refused with the kind of error
// that names it.
func TestTLSAndNKey(t *testing.T) {
	pki := testutil.NewPKI(t)
	seed, pub := testutil.NKeyUser(t)
	url := testutil.SecureBroker(t, testutil.Secure{TLS: pki, VerifyClients: true, NKeys: []string{pub}})
	good := connect.Config{URLs: []string{url}, Name: "test", NKeyFile: seed, CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	roundTrip(t, connectOK(t, good))

	// The same by a tls:// URL and the server's name given explicitly.
	viaName := good
	viaName.URLs = []string{strings.Replace(url, "nats://", "tls://", 1)}
	viaName.ServerName = "localhost"
	connectOK(t, viaName)

	otherSeed, _ := testutil.NKeyUser(t)
	for _, c := range []struct {
		name string
		edit func(*connect.Config)
		kind error
	}{
		{"plain", func(c *connect.Config) { *c = connect.Config{URLs: c.URLs} }, connect.ErrUnknownAuthority},
		{"no CA", func(c *connect.Config) { c.CAFile = "" }, connect.ErrUnknownAuthority},
		{"another CA", func(c *connect.Config) { c.CAFile = pki.OtherCA }, connect.ErrUnknownAuthority},
		{"no client certificate", func(c *connect.Config) { c.CertFile, c.KeyFile = "", "" }, connect.ErrTLS},
		{"a stranger's client certificate", func(c *connect.Config) { c.CertFile, c.KeyFile = pki.ForeignCert, pki.ForeignKey }, connect.ErrTLS},
		{"wrong server name", func(c *connect.Config) { c.ServerName = "elsewhere.example" }, connect.ErrTLS},
		{"no nkey", func(c *connect.Config) { c.NKeyFile = "" }, connect.ErrRefused},
		{"another nkey", func(c *connect.Config) { c.NKeyFile = otherSeed }, connect.ErrRefused},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := good
			c.edit(&cfg)
			refused(t, cfg, c.kind)
		})
	}
}

// TLS asked of a broker without TLS is refused, not sent in clear.
func TestTLSWantedOfAPlainBroker(t *testing.T) {
	pki := testutil.NewPKI(t)
	url := testutil.SecureBroker(t, testutil.Secure{})
	refused(t, connect.Config{URLs: []string{url}, CAFile: pki.CA}, connect.ErrTLS)
}

// Token and user/password brokers: the right secret connects and runs a
// task, a wrong one or none is refused.
func TestTokenAndPassword(t *testing.T) {
	tokURL := testutil.SecureBroker(t, testutil.Secure{Token: "s3cret-token"})
	roundTrip(t, connectOK(t, connect.Config{URLs: []string{tokURL}, Token: "s3cret-token"}))
	refused(t, connect.Config{URLs: []string{tokURL}, Token: "guess"}, connect.ErrRefused)
	refused(t, connect.Config{URLs: []string{tokURL}}, connect.ErrRefused)

	pwURL := testutil.SecureBroker(t, testutil.Secure{Users: map[string]string{"app": "pa55word"}})
	roundTrip(t, connectOK(t, connect.Config{URLs: []string{pwURL}, User: "app", Password: "pa55word"}))
	refused(t, connect.Config{URLs: []string{pwURL}, User: "app", Password: "wrong"}, connect.ErrRefused)
	refused(t, connect.Config{URLs: []string{pwURL}}, connect.ErrRefused)
}

// An operator-mode broker (JWT): a .creds file of a user of its account
// connects and runs a task; one of an account it does not know is
// refused.
func TestCredsFile(t *testing.T) {
	op := testutil.NewOperator(t)
	url := testutil.SecureBroker(t, testutil.Secure{Operator: op})
	roundTrip(t, connectOK(t, connect.Config{URLs: []string{url}, CredsFile: op.CredsFile(t)}))
	refused(t, connect.Config{URLs: []string{url}, CredsFile: testutil.StrangerCredsFile(t)}, connect.ErrRefused)
	refused(t, connect.Config{URLs: []string{url}}, connect.ErrRefused)
}

// No broker at the URL: Connect keeps trying for ConnectTimeout, then
// says it cannot reach it.
func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	ce := refused(t, connect.Config{URLs: []string{"nats://" + addr}, ConnectTimeout: 500 * time.Millisecond}, connect.ErrUnreachable)
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("gave up after %s, before ConnectTimeout 500ms", d)
	}
	if ce.URLs != "nats://"+addr {
		t.Errorf("URLs %q, want %q", ce.URLs, "nats://"+addr)
	}
}

// A fault of the Config is a *FieldError naming the field (and the file)
// that wraps forq.ErrInvalidOption, found before any connection.
func TestConfigFaults(t *testing.T) {
	pki := testutil.NewPKI(t)
	seed, _ := testutil.NKeyUser(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "nowhere.creds")
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "unreadable.nk")
	if err := os.WriteFile(unreadable, []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		cfg        connect.Config
		field      string
		with, says string
	}{
		{"token and user", connect.Config{Token: "t", User: "u"}, "Token", "User", "one way to authenticate"},
		{"nkey and creds", connect.Config{NKeyFile: seed, CredsFile: seed}, "NKeyFile", "CredsFile", "one way to authenticate"},
		{"password alone", connect.Config{Password: "p"}, "Password", "", "without a User"},
		{"cert without key", connect.Config{CertFile: pki.ClientCert}, "CertFile", "KeyFile", "needs both"},
		{"key without cert", connect.Config{KeyFile: pki.ClientKey}, "CertFile", "KeyFile", "needs both"},
		{"cert with another's key", connect.Config{CertFile: pki.ClientCert, KeyFile: pki.ForeignKey}, "CertFile", "KeyFile", pki.ClientCert},
		{"missing creds", connect.Config{CredsFile: missing}, "CredsFile", "", missing},
		{"junk creds", connect.Config{CredsFile: junk}, "CredsFile", "", "not a .creds file"},
		{"seed as creds", connect.Config{CredsFile: seed}, "CredsFile", "", "not a .creds file"},
		{"junk nkey", connect.Config{NKeyFile: junk}, "NKeyFile", "", "not an nkey seed"},
		{"a certificate as CA", connect.Config{CAFile: pki.ClientKey}, "CAFile", "", "no PEM certificate"},
		{"missing CA", connect.Config{CAFile: missing}, "CAFile", "", missing},
		{"key as cert", connect.Config{CertFile: pki.ClientKey, KeyFile: pki.ClientKey}, "CertFile", "", "no PEM CERTIFICATE"},
		{"negative timeout", connect.Config{ConnectTimeout: -time.Second}, "ConnectTimeout", "", "negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.cfg.Connect()
			var fe *connect.FieldError
			if !errors.As(err, &fe) || !errors.Is(err, forq.ErrInvalidOption) {
				t.Fatalf("error %v (%T), want a *connect.FieldError wrapping forq.ErrInvalidOption", err, err)
			}
			if fe.Field != c.field || fe.With != c.with || !strings.Contains(err.Error(), c.says) {
				t.Errorf("error %q (field %q with %q), want field %q with %q saying %q", err, fe.Field, fe.With, c.field, c.with, c.says)
			}
		})
	}
	if os.Geteuid() != 0 { // root reads any file
		_, err := connect.Config{NKeyFile: unreadable}.Connect()
		if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), unreadable) {
			t.Errorf("unreadable seed: %v, want a permission error naming %s", err, unreadable)
		}
	}
}

// FromEnv reads the FORQ_* variables of a pool's workers; a connect
// timeout that is not a duration is a FieldError naming the variable.
func TestFromEnv(t *testing.T) {
	t.Setenv("FORQ_URL", "tls://a:4222,tls://b:4222")
	t.Setenv("FORQ_CREDS", "/etc/forq/app.creds")
	t.Setenv("FORQ_TLS_CA", "/etc/forq/ca.pem")
	t.Setenv("FORQ_CONNECT_TIMEOUT", "30s")
	cfg, err := connect.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	want := connect.Config{URLs: []string{"tls://a:4222,tls://b:4222"}, CredsFile: "/etc/forq/app.creds", CAFile: "/etc/forq/ca.pem", ConnectTimeout: 30 * time.Second}
	if cfg.URL() != "tls://a:4222,tls://b:4222" || cfg.CredsFile != want.CredsFile || cfg.CAFile != want.CAFile || cfg.ConnectTimeout != want.ConnectTimeout {
		t.Errorf("FromEnv: %+v, want %+v", cfg, want)
	}
	t.Setenv("FORQ_CONNECT_TIMEOUT", "30")
	_, err = connect.FromEnv()
	var fe *connect.FieldError
	if !errors.As(err, &fe) || fe.Field != "ConnectTimeout" || !strings.Contains(err.Error(), "FORQ_CONNECT_TIMEOUT") {
		t.Errorf("FromEnv with FORQ_CONNECT_TIMEOUT=30: %v, want a FieldError naming the variable", err)
	}
}
