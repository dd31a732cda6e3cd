package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// PKI is a test's certificate authority and the certificates it signed, as
// PEM files in a temporary directory: a server certificate for 127.0.0.1
// and localhost, and a client certificate. OtherCA is a second authority
// that signed none of them.
type PKI struct {
	CA, OtherCA             string
	ServerCert, ServerKey   string
	ClientCert, ClientKey   string
	ForeignCert, ForeignKey string // a client certificate OtherCA signed
}

// NewPKI makes a PKI in a temporary directory of the test.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	dir := tb.TempDir()
	p := &PKI{
		CA: filepath.Join(dir, "ca.pem"), OtherCA: filepath.Join(dir, "other-ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
		ForeignCert: filepath.Join(dir, "foreign.pem"), ForeignKey: filepath.Join(dir, "foreign-key.pem"),
	}
	ca, caKey := makeCert(tb, "forq test CA", nil, nil, p.CA, "")
	other, otherKey := makeCert(tb, "another CA", nil, nil, p.OtherCA, "")
	srv := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "forq test broker"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	makeCert(tb, "", srv, &signer{ca, caKey}, p.ServerCert, p.ServerKey)
	cli := &x509.Certificate{Subject: pkix.Name{CommonName: "forq test client"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	makeCert(tb, "", cli, &signer{ca, caKey}, p.ClientCert, p.ClientKey)
	foreign := &x509.Certificate{Subject: pkix.Name{CommonName: "a stranger"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	makeCert(tb, "", foreign, &signer{other, otherKey}, p.ForeignCert, p.ForeignKey)
	return p
}

type signer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial int64

// makeCert makes a certificate from tmpl (a CA named caName if tmpl is
// nil), signed by by (self-signed if nil), and writes it to certPath and
// its key to keyPath (unless empty).
func makeCert(tb testing.TB, caName string, tmpl *x509.Certificate, by *signer, certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	if tmpl == nil {
		tmpl = &x509.Certificate{
			Subject:               pkix.Name{CommonName: caName},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	serial++
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano() + serial)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	parent, parentKey := tmpl, key
	if by != nil {
		parent, parentKey = by.cert, by.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	writePEM(tb, certPath, "CERTIFICATE", der)
	if keyPath != "" {
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			tb.Fatal(err)
		}
		writePEM(tb, keyPath, "PRIVATE KEY", kder)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// NKeyUser makes a user nkey, writes its seed to a file of the test's
// temporary directory, and returns the file and the public key (what a
// broker lists).
func NKeyUser(tb testing.TB) (seedFile, public string) {
	tb.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		tb.Fatal(err)
	}
	public, err = kp.PublicKey()
	if err != nil {
		tb.Fatal(err)
	}
	seedFile = filepath.Join(tb.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, append(seed, '\n'), 0o600); err != nil {
		tb.Fatal(err)
	}
	return seedFile, public
}

// Secure says how a SecureBroker authenticates its clients. Give at most
// one of Token, Users, NKeys and Operator (the broker refuses a mix).
type Secure struct {
	// TLS, if set, makes the broker require TLS with PKI's server
	// certificate; VerifyClients makes it require a client certificate
	// PKI's CA signed.
	TLS           *PKI
	VerifyClients bool
	// Token is the one token the broker takes.
	Token string
	// Users maps user names to passwords.
	Users map[string]string
	// NKeys are the public keys of the nkey users the broker takes.
	NKeys []string
	// Operator, from NewOperator, runs the broker in operator (JWT)
	// mode.
	Operator *Operator
}

// SecureBroker starts an in-process NATS server with JetStream, on a free
// loopback port, with its data in a temporary directory and the security
// of sec, and stops it when the test ends. It returns the client URL.
func SecureBroker(tb testing.TB, sec Secure) string {
	tb.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  tb.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	if sec.TLS != nil {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: sec.TLS.ServerCert, KeyFile: sec.TLS.ServerKey, CaFile: sec.TLS.CA, Verify: sec.VerifyClients,
		})
		if err != nil {
			tb.Fatal(err)
		}
		opts.TLS, opts.TLSConfig, opts.TLSVerify, opts.TLSTimeout = true, tc, sec.VerifyClients, 5
	}
	opts.Authorization = sec.Token
	for u, pw := range sec.Users {
		opts.Users = append(opts.Users, &server.User{Username: u, Password: pw})
	}
	for _, k := range sec.NKeys {
		opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: k})
	}
	if op := sec.Operator; op != nil {
		opts.TrustedOperators = []*jwt.OperatorClaims{op.claims}
		opts.SystemAccount = op.sysPub
		res := &server.MemAccResolver{}
		for pub, j := range op.accounts {
			if err := res.Store(pub, j); err != nil {
				tb.Fatal(err)
			}
		}
		opts.AccountResolver = res
	}
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("nats server: %v", err)
	}
	s.Start()
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats server: not ready for connections in 10s")
	}
	return s.ClientURL()
}

// Operator is an operator of NATS's decentralized (JWT) security: a
// system account and an application account with JetStream, whose users
// CredsFile makes.
type Operator struct {
	claims   *jwt.OperatorClaims
	sysPub   string
	app      nkeys.KeyPair
	accounts map[string]string // account public key → its JWT
}

// NewOperator makes an Operator.
func NewOperator(tb testing.TB) *Operator {
	tb.Helper()
	okp := must(tb, nkeys.CreateOperator)
	opub := mustS(tb, okp.PublicKey)
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "forq test operator"
	op := &Operator{accounts: map[string]string{}}

	account := func(name string, js bool) nkeys.KeyPair {
		akp := must(tb, nkeys.CreateAccount)
		apub := mustS(tb, akp.PublicKey)
		ac := jwt.NewAccountClaims(apub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		j, err := ac.Encode(okp)
		if err != nil {
			tb.Fatal(err)
		}
		op.accounts[apub] = j
		return akp
	}
	sys := account("SYS", false)
	op.sysPub = mustS(tb, sys.PublicKey)
	oc.SystemAccount = op.sysPub
	if _, err := oc.Encode(okp); err != nil { // fills in the claims' ID and issuer
		tb.Fatal(err)
	}
	op.claims = oc
	op.app = account("APP", true)
	return op
}

// CredsFile makes a user of the operator's application account and
// writes its .creds file (JWT and seed) to the test's temporary
// directory.
func (op *Operator) CredsFile(tb testing.TB) string {
	tb.Helper()
	return writeCreds(tb, op.app)
}

// StrangerCredsFile writes a .creds file of a user of an account the
// operator never signed: a broker of the operator refuses it.
func StrangerCredsFile(tb testing.TB) string {
	tb.Helper()
	return writeCreds(tb, must(tb, nkeys.CreateAccount))
}

func writeCreds(tb testing.TB, account nkeys.KeyPair) string {
	tb.Helper()
	ukp := must(tb, nkeys.CreateUser)
	uc := jwt.NewUserClaims(mustS(tb, ukp.PublicKey))
	uc.Name = "forq test user"
	uj, err := uc.Encode(account)
	if err != nil {
		tb.Fatal(err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		tb.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(uj, seed)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "user.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func must(tb testing.TB, f func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	tb.Helper()
	kp, err := f()
	if err != nil {
		tb.Fatal(err)
	}
	return kp
}

func mustS(tb testing.TB, f func() (string, error)) string {
	tb.Helper()
	s, err := f()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
