// Package broker runs the embedded NATS server with JetStream that is
// forq's queue: file storage in a data directory, listening on 127.0.0.1 by
// default, with no signal handlers of its own so that the process that
// embeds it owns its signals and drains before it stops.
package broker

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
// other than loopback without credentials.
var ErrInsecureListen = errors.New("listening beyond loopback needs credentials")

// ErrNotReady means the server did not accept connections within the
// readiness timeout.
var ErrNotReady = errors.New("broker not ready")

// Options configure a Server. The zero value, with a DataDir, is a broker on
// 127.0.0.1 on a free port with JetStream on file storage.
type Options struct {
	// DataDir holds JetStream's files; created if missing. Required.
	DataDir string
	// Host to listen on; empty means DefaultHost. Any address that is not
	// loopback requires Token or User and Password.
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
}

// New prepares a server: it validates o and creates the data directory. It
// does not start listening; call Start, then WaitReady.
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
	if !isLoopback(o.Host) && o.Token == "" && (o.User == "" || o.Password == "") {
		return nil, fmt.Errorf("broker: %w: host %s is not loopback; give a token or a user and password", ErrInsecureListen, o.Host)
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("broker: port %d out of range 0-65535", o.Port)
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
	switch {
	case o.HTTPPort < 0:
		sopts.HTTPHost, sopts.HTTPPort = o.Host, server.RANDOM_PORT
	case o.HTTPPort > 0:
		sopts.HTTPHost, sopts.HTTPPort = o.Host, o.HTTPPort
	}
	if o.ClusterName != "" {
		sopts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
		if o.ClusterPort == 0 {
			sopts.Cluster.Port = server.RANDOM_PORT
		}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("broker: route %q is not a URL like nats://host:6222", r)
			}
			sopts.Routes = append(sopts.Routes, u)
		}
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if o.Log {
		ns.ConfigureLogger()
	}
	return &Server{ns: ns, dataDir: dir}, nil
}

// Start starts the server; it returns once the server is set up and does
// not wait for the listener. Call
// WaitReady before connecting.
func (s *Server) Start() {
	s.ns.Start()
}

// WaitReady waits until the server accepts connections and JetStream is up,
// for at most timeout (0 means DefaultReadyTimeout). The error wraps
// ErrNotReady; a port already in use shows here.
func (s *Server) WaitReady(timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	if !s.ns.ReadyForConnections(timeout) {
		return fmt.Errorf("broker: %w within %s (is the port in use by another process?)", ErrNotReady, timeout)
	}
	if !s.ns.JetStreamEnabled() {
		return fmt.Errorf("broker: %w: JetStream did not start (see the server log with --log)", ErrNotReady)
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

// NATS returns the underlying nats-server, for in-process clients
// (nats.InProcessServer) and for what Server does not wrap.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server, flushing JetStream's files, and waits until it
// has stopped. It is safe to call more than once.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
