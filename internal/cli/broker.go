package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/forqhq/forq/broker"
)

// BrokerCmd is "forq broker".
type BrokerCmd struct {
	DataDir        string   `default:"forq-data" help:"Directory of JetStream's files (created if missing)."`
	Host           string   `default:"127.0.0.1" help:"Address to listen on. Anything but loopback needs --credentials-dir, --token or --user/--password."`
	Port           int      `default:"4222" help:"Port for NATS clients; 0 picks a free one."`
	HTTPPort       int      `default:"0" help:"Port of the NATS monitoring endpoints (/healthz, /varz, /jsz); 0 is off, -1 picks a free one."`
	SyncAlways     bool     `help:"fsync every write before acknowledging it (survives power loss; slower). By default writes reach the OS at once and are fsynced every 2 minutes."`
	MaxPayload     int32    `default:"0" help:"Largest message in bytes; 0 is NATS's default, 1 MiB."`
	Token          string   `help:"Token clients must present."`
	User           string   `help:"User name clients must present."`
	Password       string   `help:"Password clients must present."`
	CredentialsDir string   `help:"Directory of per-role credentials clients must present: nkey seeds producer.nk, worker.nk, admin.nk and sys.nk (NATS system account), mode 0600, created if missing and reused. Excludes --token, --user and --password."`
	TLSCert        string   `name:"tls-cert" help:"PEM certificate the client port serves TLS with (with --tls-key); clients must then use TLS."`
	TLSKey         string   `name:"tls-key" help:"PEM private key of --tls-cert."`
	TLSCA          string   `name:"tls-ca" help:"PEM certificate authorities that sign client certificates (with --tls-verify)."`
	TLSVerify      bool     `name:"tls-verify" help:"Require a client certificate signed by --tls-ca. Not credentials: beyond loopback, credentials are still needed."`
	ServerName     string   `help:"Name of this node (distinct per cluster node)."`
	ClusterName    string   `help:"Join a NATS cluster of this name (with --cluster-port and --routes)."`
	ClusterPort    int      `default:"6222" help:"Port for routes from cluster peers, with --cluster-name."`
	Routes         []string `help:"Cluster peers' route URLs, e.g. nats://10.0.0.2:6222, comma-separated."`
	Log            bool     `help:"Write the NATS server's own log to standard error."`
	OpsFlags       `embed:""`
	TopologyFlags  `embed:""`
}

// Run runs the broker until SIGINT or SIGTERM.
func (c *BrokerCmd) Run(env *Env) error {
	s, err := broker.New(broker.Options{
		DataDir: c.DataDir, Host: c.Host, Port: c.Port, HTTPPort: c.HTTPPort,
		SyncAlways: c.SyncAlways, MaxPayload: c.MaxPayload,
		Token: c.Token, User: c.User, Password: c.Password, CredentialsDir: c.CredentialsDir,
		TLSCert: c.TLSCert, TLSKey: c.TLSKey, TLSCA: c.TLSCA, TLSVerify: c.TLSVerify,
		ServerName: c.ServerName, ClusterName: c.ClusterName, ClusterPort: c.ClusterPort, Routes: c.Routes,
		Log: c.Log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	s.Start()
	if err := s.WaitReady(0); err != nil {
		s.Shutdown()
		return err
	}
	banner(env, "forq broker: NATS with JetStream at %s", s.ClientURL())
	banner(env, "  data directory: %s", s.DataDir())
	if c.CredentialsDir != "" {
		banner(env, "  credentials:    %s (producer.nk, worker.nk, admin.nk, sys.nk)", c.CredentialsDir)
	}
	if u := s.MonitorURL(); u != "" {
		banner(env, "  monitoring:     %s/healthz", u)
	}
	if c.ClusterName == "" {
		// Declare forq's streams and buckets now, so that a task published
		// with the nats CLI before any forq client connected is stored.
		// A cluster node leaves that to the first client, once the
		// cluster has a JetStream leader.
		if err := declare(s, c.TopologyFlags); err != nil {
			s.Shutdown()
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && topology.StorageFullCode(int(apiErr.ErrorCode)) {
				return fmt.Errorf("%w: %w (free some space where %s is)", forq.ErrStorageFull, err, s.DataDir())
			}
			return err
		}
	}
	reg, closeMetrics, err := brokerRegistry(env.Log, c.MetricsPort, s, c.Token, c.User, c.Password)
	if err != nil {
		s.Shutdown()
		return err
	}
	defer closeMetrics()
	ops, err := startOps(env.Log, c.MetricsHost, c.MetricsPort, reg, func() error {
		if !s.NATS().Running() {
			return errors.New("broker not running")
		}
		return nil
	}, func() error {
		if !s.NATS().ReadyForConnections(100 * time.Millisecond) {
			return errors.New("broker not ready")
		}
		return s.Health()
	})
	if err != nil {
		s.Shutdown()
		return err
	}
	defer ops.stop()
	banner(env, "  stop with Ctrl-C or SIGTERM; stored tasks are kept")
	watching := watchStorage(ctx, env, s)
	<-ctx.Done()
	<-watching
	banner(env, "forq broker: stopping")
	s.Shutdown()
	banner(env, "forq broker: stopped")
	return nil
}

// declare declares forq's topology on s over an in-process connection.
func declare(s *broker.Server, tf TopologyFlags) error {
	nc, err := nats.Connect("", append(s.ClientOptions(), nats.Name("forq broker"))...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = topology.Ensure(ctx, js, topology.Options{Replicas: tf.Replicas, ResultTTL: tf.ResultTTL, DuplicateWindow: tf.DuplicateWindow})
	return err
}

// storageCheckEvery is how often a broker command checks that its broker
// can store tasks, to log when that changes.
const storageCheckEvery = time.Second

// watchStorage logs, until ctx ends, each time s stops or starts again
// being able to store tasks (a full disk, JetStream's storage limit), with
// the reason. It returns
// a channel closed once it has stopped.
func watchStorage(ctx context.Context, env *Env, s *broker.Server) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(storageCheckEvery)
		defer tick.Stop()
		var was error
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			err := s.Health()
			switch {
			case err != nil && was == nil:
				env.Log.Error("broker cannot store tasks", "err", err)
			case err == nil && was != nil:
				env.Log.Info("broker stores tasks again")
			}
			was = err
		}
	}()
	return done
}
