// Package connect connects a program to forq's broker, a NATS server: the
// URLs, the credentials (a token, a user and password, an nkey seed or a
// .creds file), TLS (the CA, a client certificate, the server's name) and
// forq's reconnect settings, in one Config. The forq command's connection
// flags are this Config; a program on the library uses it the same way:
//
//	nc, err := connect.Config{
//		URLs:      []string{"tls://nats.example.com:4222"},
//		Name:      "billing worker",
//		CredsFile: "/etc/forq/worker.creds",
//		CAFile:    "/etc/forq/ca.pem",
//		ConnectTimeout: 30 * time.Second,
//	}.Connect()
//
// and hands nc to producer.New, consumer.New or admin.New. Connect fails
// with a *FieldError (which wraps forq.ErrInvalidOption) when the Config
// itself is wrong, and with an *Error whose Kind says why the broker
// could not be reached or refused us.
package connect

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Defaults of a Config's zero fields.
const (
	// DefaultURL is the broker's URL when a Config names none: the one
	// 'forq broker' listens on by default.
	DefaultURL = "nats://127.0.0.1:4222"
	// DefaultDialTimeout bounds one attempt to reach the broker (the TCP
	// connect, TLS and the NATS handshake), at start and on every
	// reconnect. A dial to the address of a broker that was just killed
	// may get no answer at all; a short bound lets the next try, or the
	// next URL of a cluster, come soon.
	DefaultDialTimeout = 2 * time.Second
	// DefaultReconnectWait is the pause between two attempts to reach
	// the same URL again after the connection was lost.
	DefaultReconnectWait = 250 * time.Millisecond
)

// Config says how to reach and authenticate to the broker. Its zero value
// connects to DefaultURL without credentials or TLS. At most one way to
// authenticate may be given: Token, User (with Password), NKeyFile or
// CredsFile.
type Config struct {
	// URLs of the broker: one, or several servers of a NATS cluster
	// (the connection moves to another when one goes away). Each is
	// "nats://host:port", "tls://host:port" (TLS required) or
	// "host:port". An entry may itself hold several URLs separated by
	// commas. Empty: DefaultURL.
	URLs []string
	// Name is the connection's name, which the broker's monitoring
	// shows (nats server report connections).
	Name string

	// Token is the token to present to a broker that authenticates by
	// token.
	Token string
	// User and Password are the user name and password to present to a
	// broker that authenticates users by password.
	User, Password string
	// NKeyFile is a file holding a user's nkey seed ("SU..."), for a
	// broker that authenticates nkey users: the seed signs the broker's
	// challenge and never leaves this process.
	NKeyFile string
	// CredsFile is a .creds file (a user's JWT and nkey seed, as 'nsc'
	// and the NATS account servers write them), for a broker in
	// operator (decentralized JWT) mode. It is read again on every
	// reconnect, so a renewed file takes effect without a restart.
	CredsFile string

	// CAFile is a PEM file of the certificate authorities that sign the
	// broker's certificate, for a broker whose certificate the system's
	// roots do not trust (a private CA). Setting it, CertFile or
	// ServerName requires TLS of the broker.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its private
	// key, for a broker that verifies its clients' certificates (mutual
	// TLS). Both or neither. They are read again on every reconnect.
	CertFile, KeyFile string
	// ServerName is the name the broker's certificate must hold, when it
	// is not the host of the URL (a broker reached by IP address or
	// through a tunnel).
	ServerName string

	// ConnectTimeout is how long Connect keeps trying to reach the
	// broker at first, a try every 100 ms; 0 is a single try. Once
	// connected, the connection reconnects forever (give
	// nats.MaxReconnects to Connect to bound it).
	ConnectTimeout time.Duration
	// DialTimeout bounds one attempt to reach a broker. 0:
	// DefaultDialTimeout, or ConnectTimeout if that is shorter.
	DialTimeout time.Duration
	// ReconnectWait is the pause between two attempts on the same URL
	// after the connection was lost. 0: DefaultReconnectWait.
	ReconnectWait time.Duration
}

// FieldError is a fault of a Config's field (or of two that do not go
// together): a missing or unreadable file, a file that is not what the
// field needs, two ways to authenticate. errors.Is(err,
// forq.ErrInvalidOption) holds for it.
type FieldError struct {
	// Field is the name of the Config's field at fault: "CredsFile".
	Field string
	// With is the field Field conflicts with, if that is the fault:
	// "User" for a Token given with a User. Empty otherwise.
	With string
	// Err says what is wrong.
	Err error
}

// Error names the field (and the one it conflicts with) and the fault.
func (e *FieldError) Error() string {
	if e.With != "" {
		return fmt.Sprintf("connect.Config: %s and %s: %v", e.Field, e.With, e.Err)
	}
	return fmt.Sprintf("connect.Config: %s: %v", e.Field, e.Err)
}

// Unwrap returns forq.ErrInvalidOption and the fault.
func (e *FieldError) Unwrap() []error { return []error{forq.ErrInvalidOption, e.Err} }

// The kinds of an *Error: why Connect could not connect.
var (
	// ErrUnreachable means no broker answered at the URLs in time: none
	// runs there, or the address is wrong.
	ErrUnreachable = errors.New("cannot reach the broker")
	// ErrRefused means the broker refused the credentials: none were
	// given to a broker that wants some, or the wrong ones.
	ErrRefused = errors.New("the broker refused our credentials")
	// ErrUnknownAuthority means the broker's certificate is signed by an
	// authority this process does not trust: give its CA as CAFile.
	ErrUnknownAuthority = errors.New("the broker's TLS certificate is signed by an unknown authority")
	// ErrTLS means TLS failed otherwise: the broker wants a client
	// certificate or refused ours, its certificate does not hold the
	// expected name, or TLS was asked of a broker that offers none.
	ErrTLS = errors.New("TLS with the broker failed")
)

// Error is why Connect failed to connect.
type Error struct {
	// Kind is ErrUnreachable, ErrRefused, ErrUnknownAuthority or ErrTLS.
	Kind error
	// URLs are the URLs tried, comma-separated.
	URLs string
	// Err is the error of the last attempt.
	Err error
}

// Error says what failed, where, why, and what to set.
func (e *Error) Error() string {
	return fmt.Sprintf("%v at %s: %v (%s)", e.Kind, e.URLs, e.Err, e.hint())
}

// Unwrap returns the Kind and the last attempt's error.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

func (e *Error) hint() string {
	switch {
	case errors.Is(e.Kind, ErrRefused):
		return "give the broker's credentials: Token, User and Password, NKeyFile or CredsFile"
	case errors.Is(e.Kind, ErrUnknownAuthority):
		return "set CAFile to the PEM file of the CA that signed the broker's certificate"
	case errors.Is(e.Kind, ErrTLS):
		return "check CAFile, CertFile and KeyFile, ServerName, and that the broker has TLS"
	}
	return "check that the broker runs and that the URLs are right"
}

// urls returns the Config's URLs, comma-separated, or DefaultURL.
func (c Config) urls() string {
	var us []string
	for _, u := range c.URLs {
		for p := range strings.SplitSeq(u, ",") {
			if p = strings.TrimSpace(p); p != "" {
				us = append(us, p)
			}
		}
	}
	if len(us) == 0 {
		return DefaultURL
	}
	return strings.Join(us, ",")
}

// Validate checks the Config: the fields that go together, and that each
// file is there, readable, and holds what its field needs. Its error is a
// *FieldError.
func (c Config) Validate() error {
	auth := []struct{ field, v string }{{"Token", c.Token}, {"User", c.User}, {"NKeyFile", c.NKeyFile}, {"CredsFile", c.CredsFile}}
	first := ""
	for _, a := range auth {
		if a.v == "" {
			continue
		}
		if first != "" {
			return &FieldError{Field: first, With: a.field, Err: errors.New("both given: give one way to authenticate")}
		}
		first = a.field
	}
	if c.Password != "" && c.User == "" {
		return &FieldError{Field: "Password", Err: errors.New("given without a User")}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return &FieldError{Field: "CertFile", With: "KeyFile", Err: errors.New("one given without the other: a client certificate needs both")}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"ConnectTimeout", c.ConnectTimeout}, {"DialTimeout", c.DialTimeout}, {"ReconnectWait", c.ReconnectWait}} {
		if d.v < 0 {
			return &FieldError{Field: d.field, Err: fmt.Errorf("%s: must not be negative", d.v)}
		}
	}
	return c.checkFiles()
}

// checkFiles reads each file the Config names and checks its content.
func (c Config) checkFiles() error {
	checks := []struct {
		field, path string
		check       func([]byte) error
	}{
		{"NKeyFile", c.NKeyFile, checkSeed},
		{"CredsFile", c.CredsFile, checkCreds},
		{"CAFile", c.CAFile, checkCA},
		{"CertFile", c.CertFile, checkPEM("CERTIFICATE")},
		{"KeyFile", c.KeyFile, checkPEM("PRIVATE KEY")},
	}
	for _, f := range checks {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return &FieldError{Field: f.field, Err: err}
		}
		err = f.check(b)
		clear(b) // a seed or key stays in memory no longer than needed
		if err != nil {
			return &FieldError{Field: f.field, Err: fmt.Errorf("%s: %w", f.path, err)}
		}
	}
	if c.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			return &FieldError{Field: "CertFile", With: "KeyFile", Err: fmt.Errorf("%s and %s: %w", c.CertFile, c.KeyFile, err)}
		}
	}
	return nil
}

func checkSeed(b []byte) error {
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return fmt.Errorf("not an nkey seed: %w", err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return errors.New("not a user's nkey seed (one starts with SU)")
	}
	return nil
}

func checkCreds(b []byte) error {
	j, err := nkeys.ParseDecoratedJWT(b)
	if err != nil {
		return fmt.Errorf("not a .creds file: no user JWT: %w", err)
	}
	if _, err := jwt.DecodeUserClaims(j); err != nil {
		return fmt.Errorf("not a .creds file: no user JWT: %w", err)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return fmt.Errorf("not a .creds file: no nkey seed: %w", err)
	}
	kp.Wipe()
	return nil
}

func checkCA(b []byte) error {
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return errors.New("no PEM certificate in it")
	}
	return nil
}

// checkPEM returns a check that the file holds a PEM block whose type
// ends with kind ("PRIVATE KEY" takes "EC PRIVATE KEY" and the rest).
func checkPEM(kind string) func([]byte) error {
	return func(b []byte) error {
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				return fmt.Errorf("no PEM %s in it", kind)
			}
			if strings.HasSuffix(blk.Type, kind) {
				return nil
			}
		}
	}
}

// Options validates the Config and returns the nats.Options it stands
// for, to pass to nats.Connect with the URLs of URL. Connect is the
// simpler way; Options is for a program that connects by itself.
func (c Config) Options() ([]nats.Option, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	dial := c.DialTimeout
	if dial == 0 {
		dial = DefaultDialTimeout
		if c.ConnectTimeout > 0 {
			dial = min(dial, c.ConnectTimeout)
		}
	}
	opts := []nats.Option{
		nats.Timeout(dial),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(cmp.Or(c.ReconnectWait, DefaultReconnectWait)),
	}
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	switch {
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, &FieldError{Field: "NKeyFile", Err: err}
		}
		opts = append(opts, o)
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.CAFile != "" || c.CertFile != "" || c.ServerName != "" {
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}))
	}
	if c.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	if c.CertFile != "" {
		opts = append(opts, nats.ClientCert(c.CertFile, c.KeyFile))
	}
	return opts, nil
}

// URL returns the Config's URLs as nats.Connect takes them:
// comma-separated, DefaultURL if there are none.
func (c Config) URL() string { return c.urls() }

// Connect validates the Config and connects to the broker, trying again
// every 100 ms until ConnectTimeout has passed; a refusal (credentials,
// TLS) ends the tries at once, since another would be refused too. extra
// options go after the Config's, so they may override them (handlers,
// nats.MaxReconnects). Its error is a *FieldError for a fault of the
// Config, or an *Error.
func (c Config) Connect(extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	url := c.urls()
	deadline := time.Now().Add(c.ConnectTimeout)
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		kind := Classify(err)
		if !errors.Is(kind, ErrUnreachable) || !time.Now().Before(deadline) {
			return nil, &Error{Kind: kind, URLs: url, Err: err}
		}
		time.Sleep(min(100*time.Millisecond, time.Until(deadline)))
	}
}

// Classify returns the kind of a failure of nats.Connect: ErrRefused,
// ErrUnknownAuthority, ErrTLS or ErrUnreachable (any other).
func Classify(err error) error {
	var ua x509.UnknownAuthorityError
	var host x509.HostnameError
	var inv x509.CertificateInvalidError
	var rec tls.RecordHeaderError
	var op *net.OpError
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired):
		return ErrRefused
	case errors.As(err, &ua):
		return ErrUnknownAuthority
	// nats.ErrTLS: the handshake failed, or the broker closed the
	// connection right after it, which is how it refuses a client
	// certificate as often as by an alert (a "remote error").
	case errors.As(err, &host), errors.As(err, &inv), errors.As(err, &rec),
		errors.Is(err, nats.ErrTLS),
		errors.Is(err, nats.ErrSecureConnWanted), errors.Is(err, nats.ErrSecureConnRequired),
		errors.As(err, &op) && op.Op == "remote error":
		return ErrTLS
	}
	return ErrUnreachable
}

// FromEnv returns the Config of the forq command's FORQ_* environment
// variables, those a forq pool gives the workers it starts (its own
// command's too, with 'forq pool -- ./worker'):
//
//	FORQ_URL                URLs (comma-separated)
//	FORQ_TOKEN              Token
//	FORQ_USER               User
//	FORQ_PASSWORD           Password
//	FORQ_NKEY               NKeyFile
//	FORQ_CREDS              CredsFile
//	FORQ_TLS_CA             CAFile
//	FORQ_TLS_CERT           CertFile
//	FORQ_TLS_KEY            KeyFile
//	FORQ_TLS_SERVER_NAME    ServerName
//	FORQ_CONNECT_TIMEOUT    ConnectTimeout (a Go duration: 30s)
//
// An unset or empty variable leaves its field zero. Its error, a
// *FieldError, is for a FORQ_CONNECT_TIMEOUT that is not a duration.
func FromEnv() (Config, error) {
	c := Config{
		Token:      os.Getenv("FORQ_TOKEN"),
		User:       os.Getenv("FORQ_USER"),
		Password:   os.Getenv("FORQ_PASSWORD"),
		NKeyFile:   os.Getenv("FORQ_NKEY"),
		CredsFile:  os.Getenv("FORQ_CREDS"),
		CAFile:     os.Getenv("FORQ_TLS_CA"),
		CertFile:   os.Getenv("FORQ_TLS_CERT"),
		KeyFile:    os.Getenv("FORQ_TLS_KEY"),
		ServerName: os.Getenv("FORQ_TLS_SERVER_NAME"),
	}
	if u := os.Getenv("FORQ_URL"); u != "" {
		c.URLs = []string{u}
	}
	if s := os.Getenv("FORQ_CONNECT_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return Config{}, &FieldError{Field: "ConnectTimeout", Err: fmt.Errorf("FORQ_CONNECT_TIMEOUT %q: %w", s, err)}
		}
		c.ConnectTimeout = d
	}
	return c, nil
}
