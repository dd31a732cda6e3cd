// Package broker runs the embedded NATS server with JetStream that is
// forq's queue: file storage in a data directory, listening on 127.0.0.1 by
// default, with no signal handlers of its own so that the process that
// embeds it owns its signals and drains before it stops.
package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Defaults of Options.
const (
	// DefaultHost is the address the broker listens on: loopback only.
	DefaultHost = "127.0.0.1"
	// DefaultPort is the NATS client port forq's commands use by default.
	DefaultPort = 4222
	// DefaultReadyTimeout bounds WaitReady when it is given no timeout.
	DefaultReadyTimeout = 10 * time.Second
)

// ErrInsecureListen means the broker was asked to listen on an address
// other than loopback without credentials (TLS alone is not credentials).
var ErrInsecureListen = errors.New("listening beyond loopback needs credentials")

// ErrNotReady means the server did not accept connections within the
// readiness timeout.
var ErrNotReady = errors.New("broker not ready")

// ErrStartFailed means the server could not start: its port is taken, its
// data directory cannot be written, ... The error that wraps it names the
// cause.
var ErrStartFailed = errors.New("could not start")

// ErrDataDirLocked means another broker (or "forq run") already runs on the
// data directory. Two brokers writing one directory lose each other's
// tasks, so the second refuses to start; its error names the holder's PID.
var ErrDataDirLocked = errors.New("data directory in use")

// Options configure a Server. The zero value, with a DataDir, is a broker on
// 127.0.0.1 on a free port with JetStream on file storage.
type Options struct {
	// DataDir holds JetStream's files; created if missing. Required.
	DataDir string
	// Host to listen on; empty means DefaultHost. Any address that is not
	// loopback requires credentials: CredentialsDir, Token, or User and
	// Password.
	Host string
	// Port for NATS clients; 0 picks a free port.
	Port int
	// HTTPPort serves the NATS monitoring endpoints (/varz, /jsz, /healthz,
	// ...) on Host; 0 means off, -1 picks a free port.
	HTTPPort int
	// SyncAlways makes the broker fsync every write before it acknowledges
	// it. By default writes reach the operating system before the ack
	// (they survive any process crash) and are fsynced every two minutes.
	SyncAlways bool
	// MaxPayload is the largest message the broker accepts, in bytes; 0
	// means NATS's default of 1 MiB.
	MaxPayload int32
	// Token, or User and Password, that clients must present. Empty means
	// no authentication (allowed on loopback only).
	Token, User, Password string
	// CredentialsDir holds the per-role credentials clients must present:
	// one nkey seed per role (see Roles and SeedFile), mode 0600, created
	// with the directory (mode 0700) if missing and reused afterwards.
	// The broker enforces each role's subjects (RolePermissions), and
	// the sys role is a user of the NATS system account. It excludes
	// Token, User and Password.
	CredentialsDir string
	// TLSCert and TLSKey are the PEM files of the certificate and key the
	// client port serves TLS with; clients must then connect with TLS.
	// Empty means no TLS.
	TLSCert, TLSKey string
	// TLSCA is a PEM file of the certificate authorities that sign
	// clients' certificates, for TLSVerify.
	TLSCA string
	// TLSVerify requires every client to present a certificate signed by
	// TLSCA. It is not credentials: a broker beyond loopback still needs
	// CredentialsDir, Token, or User and Password.
	TLSVerify bool
	// ServerName names this node; empty lets NATS pick one. Cluster nodes
	// need distinct names.
	ServerName string
	// ClusterName, ClusterPort and Routes make this broker one node of a
	// NATS cluster: it listens for routes on ClusterPort (on Host) and
	// connects to the peers in Routes (nats://host:port). Empty ClusterName
	// means a single node.
	ClusterName string
	ClusterPort int
	Routes      []string
	// Log writes the server's own log to standard error when true.
	Log bool
	// Debug turns on the server's debug and protocol trace log (with Log).
	Debug bool
}

// Server is a running embedded NATS server with JetStream.
type Server struct {
	ns      *server.Server
	dataDir string
	log     *serverLog

	clustered bool
	auth      []nats.Option // the broker's own connections' credentials

	stopWatch context.CancelFunc // nil until Start
	watched   chan struct{}      // closed when watch has returned

	mu   sync.Mutex
	lock *os.File // the data directory's lock; nil once released
	down error    // why JetStream is disabled (a full disk), or nil
}

// New prepares a server: it validates o, creates the data directory and
// takes its lock (a file broker.lock holding this process's PID), which
// Shutdown releases. It does not start listening; call Start, then
// WaitReady. The error wraps ErrDataDirLocked when another process holds
// the data directory, and names the directory when it cannot be created or
// written.
func New(o Options) (*Server, error) {
	if o.DataDir == "" {
		return nil, errors.New("broker: no data directory given")
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("broker: data directory %q: %w", o.DataDir, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("broker: create data directory: %w", err)
	}
	if o.Host == "" {
		o.Host = DefaultHost
	}
	if err := checkListen(o); err != nil {
		return nil, err
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	sopts := &server.Options{
		ServerName:         o.ServerName,
		Host:               o.Host,
		Port:               port,
		NoSigs:             true, // forq's processes own their signals and drain first
		NoLog:              !o.Log,
		Debug:              o.Debug,
		Trace:              o.Debug,
		JetStream:          true,
		StoreDir:           dir,
		SyncAlways:         o.SyncAlways,
		MaxPayload:         o.MaxPayload,
		Authorization:      o.Token,
		Username:           o.User,
		Password:           o.Password,
		JetStreamMaxMemory: 256 << 20,
	}
	if err := tlsOptions(sopts, o); err != nil {
		return nil, err
	}
	auth, err := authOf(sopts, o)
	if err != nil {
		return nil, err
	}
	switch {
	case o.HTTPPort < 0:
		sopts.HTTPHost, sopts.HTTPPort = o.Host, server.RANDOM_PORT
	case o.HTTPPort > 0:
		sopts.HTTPHost, sopts.HTTPPort = o.Host, o.HTTPPort
	}
	if err := clusterOptions(sopts, o); err != nil {
		return nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		_ = lock.Close() // releases the lock; the server's error is the one to report
		return nil, fmt.Errorf("broker: %w", err)
	}
	sl := newServerLog(o.Log, o.Debug)
	ns.SetLoggerV2(sl, o.Log && o.Debug, o.Log && o.Debug, false)
	return &Server{
		ns: ns, dataDir: dir, log: sl, lock: lock,
		clustered: o.ClusterName != "", auth: auth,
	}, nil
}

// checkListen checks o's host, port and credentials: anything but
// loopback needs credentials.
func checkListen(o Options) error {
	if o.CredentialsDir != "" && (o.Token != "" || o.User != "" || o.Password != "") {
		return errors.New("broker: a credentials directory excludes a token, user or password: give one or the other")
	}
	if !isLoopback(o.Host) && o.CredentialsDir == "" && o.Token == "" && (o.User == "" || o.Password == "") {
		return fmt.Errorf("broker: %w: host %s is not loopback; give a credentials directory, a token, or a user and password", ErrInsecureListen, o.Host)
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("broker: port %d out of range 0-65535", o.Port)
	}
	return nil
}

// clusterOptions sets in sopts o's cluster, if any.
func clusterOptions(sopts *server.Options, o Options) error {
	if o.ClusterName == "" {
		return nil
	}
	sopts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
	if o.ClusterPort == 0 {
		sopts.Cluster.Port = server.RANDOM_PORT
	}
	for _, r := range o.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return fmt.Errorf("broker: route %q is not a URL like nats://host:6222", r)
		}
		sopts.Routes = append(sopts.Routes, u)
	}
	return nil
}

// authOf sets in sopts the users of o.CredentialsDir, if any, and returns
// the options that give the broker's own connections admin rights.
func authOf(sopts *server.Options, o Options) ([]nats.Option, error) {
	switch {
	case o.CredentialsDir != "":
		keys, err := loadCredentials(o.CredentialsDir)
		if err != nil {
			return nil, err
		}
		if err := authOptions(sopts, keys); err != nil {
			return nil, err
		}
		opt, err := nkeyOption(keys[RoleAdmin])
		if err != nil {
			return nil, err
		}
		return []nats.Option{opt}, nil
	case o.Token != "":
		return []nats.Option{nats.Token(o.Token)}, nil
	case o.User != "":
		return []nats.Option{nats.UserInfo(o.User, o.Password)}, nil
	}
	return nil, nil
}

// Start starts the server; it returns once the server is set up and does
// not wait for the listener. Call WaitReady before connecting. Once ready,
// the server answers health requests on forq.SubjectBrokerHealth and, on a
// single node, disables JetStream when its disk is full and enables it
// again once space is freed (see Health).
func (s *Server) Start() {
	s.ns.Start()
	ctx, cancel := context.WithCancel(context.Background())
	s.stopWatch, s.watched = cancel, make(chan struct{})
	go func() {
		defer close(s.watched)
		s.watch(ctx)
	}()
}

// WaitReady waits until the server accepts connections and JetStream is up,
// for at most timeout (0 means DefaultReadyTimeout). A server that fails
// to start (its port or monitoring port in use, its data directory not
// writable, ...) returns at once an error that wraps ErrStartFailed and
// names the cause; a server that is still not ready after timeout returns
// one that wraps ErrNotReady.
func (s *Server) WaitReady(timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	deadline := time.Now().Add(timeout)
	for {
		if err := s.log.fatalErr(); err != nil {
			return fmt.Errorf("broker: %w: %w", ErrStartFailed, err)
		}
		if s.ns.ReadyForConnections(25 * time.Millisecond) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker: %w within %s", ErrNotReady, timeout)
		}
	}
	for !s.ns.JetStreamEnabled() {
		if err := s.log.fatalErr(); err != nil {
			return fmt.Errorf("broker: %w: %w", ErrStartFailed, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker: %w: JetStream did not start within %s", ErrNotReady, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// MonitorURL is the base URL of the monitoring endpoints, or "" when they
// are off.
func (s *Server) MonitorURL() string {
	a := s.ns.MonitorAddr()
	if a == nil {
		return ""
	}
	return "http://" + net.JoinHostPort(a.IP.String(), fmt.Sprint(a.Port))
}

// DataDir is the absolute path of the data directory.
func (s *Server) DataDir() string { return s.dataDir }

// ClientOptions are the options of an in-process connection to the
// server with admin rights: nats.Connect("", s.ClientOptions()...).
func (s *Server) ClientOptions() []nats.Option {
	return append([]nats.Option{nats.InProcessServer(s.ns)}, s.auth...)
}

// NATS returns the underlying nats-server, for in-process clients
// (nats.InProcessServer) and for what Server does not wrap.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server, flushing JetStream's files, waits until it
// has stopped and releases the data directory's lock. It is safe to call
// more than once.
func (s *Server) Shutdown() {
	if s.stopWatch != nil {
		s.stopWatch()
		<-s.watched
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock != nil {
		_ = s.lock.Close() // releases the lock; Shutdown has no error to return
		s.lock = nil
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
