package broker_test

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/nats-io/nats.go"
)

// tlsBroker starts a broker that serves TLS with p's server certificate,
// verifying client certificates when verify is true.
func tlsBroker(t *testing.T, p *testutil.PKI, verify bool) *broker.Server {
	t.Helper()
	o := broker.Options{DataDir: t.TempDir(), TLSCert: p.ServerCert, TLSKey: p.ServerKey}
	if verify {
		o.TLSCA, o.TLSVerify = p.CA, true
	}
	s, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if err := s.WaitReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	return s
}

// healthy asks the broker's health responder, over nc, whether it can
// store tasks: it proves that the broker's own in-process connection works
// beside TLS.
func healthy(t *testing.T, nc *nats.Conn) {
	t.Helper()
	m, err := nc.Request(forq.SubjectBrokerHealth, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("health request: %v", err)
	}
	if !strings.Contains(string(m.Data), `"healthy":true`) {
		t.Errorf("health: %s", m.Data)
	}
}

// A broker serving TLS takes a client that trusts its CA, and refuses one
// that does not use TLS or does not trust the CA.
func TestTLSBroker(t *testing.T) {
	p := testutil.NewPKI(t)
	s := tlsBroker(t, p, false)
	url := s.ClientURL()
	if !strings.HasPrefix(url, "tls://") {
		t.Errorf("client URL %s, want tls://", url)
	}

	nc, err := nats.Connect(url, nats.RootCAs(p.CA), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("client with the CA: %v", err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Error("the connection is not TLS")
	}
	if _, err := nc.TLSConnectionState(); err != nil {
		t.Errorf("TLS connection state: %v", err)
	}
	healthy(t, nc)

	plainRefused(t, s)
	if nc, err := nats.Connect(url, nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Error("a client without the CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client without the CA: %v, want a certificate error", err)
	}
}

// plainRefused speaks NATS without TLS to s, which must say TLS is
// required and never answer the client's PING.
func plainRefused(t *testing.T, s *broker.Server) {
	t.Helper()
	_, hostPort, _ := strings.Cut(s.ClientURL(), "://")
	conn, err := net.DialTimeout("tcp", hostPort, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read INFO: %v", err)
	}
	if !strings.Contains(info, `"tls_required":true`) {
		t.Errorf("INFO does not require TLS: %s", info)
	}
	if _, err := conn.Write([]byte("CONNECT {\"verbose\":false}\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			got = append(got, strings.TrimSpace(line))
		}
		if err != nil {
			break
		}
	}
	for _, l := range got {
		if l == "PONG" {
			t.Errorf("a plain client got PONG from a TLS broker: %q", got)
		}
	}
	t.Logf("plain client got %q, then the connection closed", got)
}

// A broker that verifies client certificates takes a client with one
// signed by its CA, and refuses a client without one.
func TestTLSBrokerVerifiesClients(t *testing.T) {
	p := testutil.NewPKI(t)
	s := tlsBroker(t, p, true)
	url := s.ClientURL()
	if !strings.HasPrefix(url, "tls://") {
		t.Errorf("client URL %s, want tls://", url)
	}

	nc, err := nats.Connect(url, nats.RootCAs(p.CA), nats.ClientCert(p.ClientCert, p.ClientKey), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	defer nc.Close()
	healthy(t, nc)
	plainRefused(t, s)

	if nc, err := nats.Connect(url, nats.RootCAs(p.CA), nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Error("a client without a certificate connected to a verifying broker")
	} else {
		t.Logf("client without a certificate: %v", err)
	}
	// A certificate the CA did not sign.
	other := testutil.NewPKI(t)
	if nc, err := nats.Connect(url, nats.RootCAs(p.CA), nats.ClientCert(other.ClientCert, other.ClientKey), nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Error("a client with a certificate of another CA connected")
	}
}

// TLS settings that cannot work are refused with their cause, and TLS is
// no credentials: a broker beyond loopback with TLS alone does not start.
func TestTLSOptionsChecked(t *testing.T) {
	p := testutil.NewPKI(t)
	cases := []struct {
		name string
		o    broker.Options
		want string
	}{
		{"cert without key", broker.Options{TLSCert: p.ServerCert}, "--tls-key"},
		{"verify without CA", broker.Options{TLSCert: p.ServerCert, TLSKey: p.ServerKey, TLSVerify: true}, "--tls-ca"},
		{"missing cert file", broker.Options{TLSCert: p.ServerCert + ".nope", TLSKey: p.ServerKey}, "no such file"},
		{"beyond loopback with TLS only", broker.Options{Host: "0.0.0.0", TLSCert: p.ServerCert, TLSKey: p.ServerKey, TLSCA: p.CA, TLSVerify: true}, "not loopback"},
	}
	for _, c := range cases {
		c.o.DataDir = t.TempDir()
		s, err := broker.New(c.o)
		if err == nil {
			s.Shutdown()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want it to say %q", c.name, err, c.want)
		}
		if c.name == "beyond loopback with TLS only" && !errors.Is(err, broker.ErrInsecureListen) {
			t.Errorf("%s: %v does not wrap ErrInsecureListen", c.name, err)
		}
	}
}
