package cli

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/ui"
	"github.com/nats-io/nats.go"
)

// UIFlags configure the web dashboard.
type UIFlags struct {
	UIAddr  string `name:"ui-addr" default:"127.0.0.1:8474" help:"Address the web dashboard listens on (host:port; port 0 picks a free one). Beyond loopback it needs --ui-token."`
	UIToken string `name:"ui-token" help:"Token the dashboard requires of every request: open the page once as http://ADDR/?token=TOKEN (it sets an HttpOnly cookie), or send Authorization: Bearer TOKEN. Required when --ui-addr is not loopback."`
}

// UICmd is "forq ui".
type UICmd struct {
	ConnFlags `embed:""`
	UIFlags   `embed:""`
}

// Help explains the security model.
func (c *UICmd) Help() string {
	return `Serves the web dashboard: queues with live throughput and failure charts,
workers, a task by ID (its record, failed attempts, dead letters), dead
letters (inspect, retry, purge), schedules (remove), and pause and resume
of a queue. It connects to the broker as the other client commands do,
and needs the rights of forq stats, forq dead and forq pause.

By default it listens on 127.0.0.1 only and answers only loopback host
names. To serve it beyond loopback, give --ui-token: every request must
then present the token (open http://HOST:PORT/?token=TOKEN once; the page
keeps it in an HttpOnly, SameSite=Strict cookie). Actions are POSTs that
must come from the page itself (same origin, and a per-process CSRF
token); GET never changes anything.`
}

// Run serves the dashboard until SIGINT or SIGTERM.
func (c *UICmd) Run(env *Env) error {
	if err := ui.CheckAddr(c.UIAddr, c.UIToken); err != nil {
		return usageErr("%v", err)
	}
	nc, err := c.connect("forq ui", env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	return serveUI(ctx, env, "forq ui", nc, c.UIFlags)
}

// serveUI serves the dashboard over nc on flags' address until ctx ends.
func serveUI(ctx context.Context, env *Env, name string, nc *nats.Conn, flags UIFlags) error {
	ln, err := startUI(ctx, env, name, nc, flags)
	if err != nil {
		return err
	}
	return <-ln
}

// startUI starts the dashboard over nc and returns the channel of its end
// (after ctx ends, or with the error that stopped it).
func startUI(ctx context.Context, env *Env, name string, nc *nats.Conn, flags UIFlags) (<-chan error, error) {
	if err := ui.CheckAddr(flags.UIAddr, flags.UIToken); err != nil {
		return nil, usageErr("%v", err)
	}
	in, err := admin.New(ctx, nc, admin.Config{})
	if err != nil {
		return nil, err
	}
	res, err := ui.NewResults(nc)
	if err != nil {
		return nil, err
	}
	srv, err := ui.New(ui.Config{Inspector: in, Results: res, Token: flags.UIToken, Log: env.Log, Conn: nc})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", flags.UIAddr)
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	login := ""
	if flags.UIToken != "" {
		login = " (open it once as /?token=<your --ui-token>)"
	}
	banner(env, "%s: dashboard at http://%s/%s", name, ln.Addr(), login)
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ctx, ln)
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		done <- err
	}()
	return done, nil
}
