package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/forqhq/forq/broker"
)

// BrokerCmd is "forq broker".
type BrokerCmd struct {
	DataDir       string   `default:"forq-data" help:"Directory of JetStream's files (created if missing)."`
	Host          string   `default:"127.0.0.1" help:"Address to listen on. Anything but loopback needs --token or --user/--password."`
	Port          int      `default:"4222" help:"Port for NATS clients; 0 picks a free one."`
	HTTPPort      int      `default:"0" help:"Port of the NATS monitoring endpoints (/healthz, /varz, /jsz); 0 is off, -1 picks a free one."`
	SyncAlways    bool     `help:"fsync every write before acknowledging it (survives power loss; slower). By default writes reach the OS at once and are fsynced every 2 minutes."`
	MaxPayload    int32    `default:"0" help:"Largest message in bytes; 0 is NATS's default, 1 MiB."`
	Token         string   `help:"Token clients must present."`
	User          string   `help:"User name clients must present."`
	Password      string   `help:"Password clients must present."`
	ServerName    string   `help:"Name of this node (distinct per cluster node)."`
	ClusterName   string   `help:"Join a NATS cluster of this name (with --cluster-port and --routes)."`
	ClusterPort   int      `default:"6222" help:"Port for routes from cluster peers, with --cluster-name."`
	Routes        []string `help:"Cluster peers' route URLs, e.g. nats://10.0.0.2:6222, comma-separated."`
	Log           bool     `help:"Write the NATS server's own log to standard error."`
	OpsFlags      `embed:""`
	TopologyFlags `embed:""`
}

// Run runs the broker until SIGINT or SIGTERM.
func (c *BrokerCmd) Run(env *Env) error {
	s, err := broker.New(broker.Options{
		DataDir: c.DataDir, Host: c.Host, Port: c.Port, HTTPPort: c.HTTPPort,
		SyncAlways: c.SyncAlways, MaxPayload: c.MaxPayload,
		Token: c.Token, User: c.User, Password: c.Password,
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
	fmt.Fprintf(env.Stdout, "forq broker: NATS with JetStream at %s\n", s.ClientURL())
	fmt.Fprintf(env.Stdout, "  data directory: %s\n", s.DataDir())
	if u := s.MonitorURL(); u != "" {
		fmt.Fprintf(env.Stdout, "  monitoring:     %s/healthz\n", u)
	}
	if c.ClusterName == "" {
		// Declare forq's streams and buckets now, so that a task published
		// with the nats CLI before any forq client connected is stored.
		// A cluster node leaves that to the first client, once the
		// cluster has a JetStream leader.
		if err := declare(s, c.Token, c.User, c.Password, c.TopologyFlags); err != nil {
			s.Shutdown()
			return err
		}
	}
	ops, err := startOps(env.Log, c.MetricsHost, c.MetricsPort, newRegistry(), func() error {
		if !s.NATS().Running() {
			return errors.New("broker not running")
		}
		return nil
	}, func() error {
		if !s.NATS().ReadyForConnections(100*time.Millisecond) || !s.NATS().JetStreamEnabled() {
			return errors.New("broker not ready: JetStream is not up")
		}
		return nil
	})
	if err != nil {
		s.Shutdown()
		return err
	}
	defer ops.stop()
	fmt.Fprintf(env.Stdout, "  stop with Ctrl-C or SIGTERM; stored tasks are kept\n")
	<-ctx.Done()
	fmt.Fprintln(env.Stdout, "forq broker: stopping")
	s.Shutdown()
	fmt.Fprintln(env.Stdout, "forq broker: stopped")
	return nil
}

// declare declares forq's topology on s over an in-process connection.
func declare(s *broker.Server, token, user, password string, tf TopologyFlags) error {
	opts := []nats.Option{nats.InProcessServer(s.NATS()), nats.Name("forq broker")}
	if token != "" {
		opts = append(opts, nats.Token(token))
	}
	if user != "" {
		opts = append(opts, nats.UserInfo(user, password))
	}
	nc, err := nats.Connect("", opts...)
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
	_, err = topology.Ensure(ctx, js, topology.Options{Replicas: tf.Replicas, ResultTTL: tf.ResultTTL})
	return err
}
