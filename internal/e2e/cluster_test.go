package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/torture"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterNodes are the server names of the three brokers, which are also
// their host names on the test's Docker networks.
var clusterNodes = []string{"n1", "n2", "n3"}

// clusterWork is what each task of the cluster test does: the torture
// handler sleeps this long, then records its end.
const clusterWork = "2ms"

// TestClusterFaults runs three "forq broker" nodes, each in its own
// container, as one NATS cluster with forq's streams and bucket at three
// replicas, a "forq pool" in a fourth container (the torture handler
// appending each run's start and end to history files in a directory
// bind-mounted from the host) and producers in the test that record each
// acknowledged enqueue. The containers talk over Docker networks the test
// creates (internal: nothing leaves them): one for the routes between the
// nodes, and one per node for its clients (the pool's container is on the
// three; the test reaches them from the host). Three faults, each checked
// against that history (every acknowledged enqueue ran to completion):
//
//   - the FORQ_TASKS stream leader, made the leader of the queue's
//     consumers too (the worst case for the workers), SIGKILLed during a
//     20,000-task run and started again later: how long enqueues failed,
//     when the new leaders were elected, and how long after that the
//     workers ran tasks again (at most about a second, their longest
//     wait between two failed pulls; the test allows 10 s);
//   - a node (the stream leader) cut off from the other two (its route
//     network disconnected) for 10 s while one producer writes to it
//     alone and another to the other two nodes: nothing the cut-off node
//     acknowledged is lost, the two others keep accepting enqueues, and
//     everything runs once the partition heals;
//   - a rolling restart (SIGTERM) of the three nodes, one at a time, each
//     waited for until its replicas are current again, while a producer
//     writes.
//
// It needs a Docker engine; without one it is skipped, as the
// docker-compose tests are.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the Docker cluster test")
	}
	clusterDocker(t)
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	image, _ := composeImage(t, ctx, "forq-e2e-cluster")
	c := startCluster(t, ctx, image)
	figuref(t, "cluster up in %s (image built, three nodes, topology at R3, pool of 2 workers × 16 ready)", time.Since(began).Round(time.Millisecond))

	// One phase after the other, on one cluster (each phase's tasks have
	// IDs of their own): a cluster takes a while to start.
	c.leaderKill(t, ctx, 20000)
	c.partition(t, ctx, 10*time.Second)
	c.rollingRestart(t, ctx)
	figuref(t, "the whole cluster test took %s", time.Since(began).Round(time.Second))
}

// clusterDocker skips the test without a Docker engine.
func clusterDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("no docker command")
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		t.Skipf("no Docker daemon: docker info: %v", err)
	}
}

// cluster is the test's three-node cluster, its pool and its history.
type cluster struct {
	t       *testing.T
	prefix  string            // of the containers' and networks' names
	token   string            // the clients' FORQ_TOKEN
	routes  string            // the routes network
	clients map[string]string // node → its clients network
	routeIP map[string]string // node → its address on the routes network
	ip      map[string]string // node → its address on its clients network
	hist    string            // the history directory
	enq     *torture.Log      // its enqueued.jsonl
	faults  *torture.Log      // its faults.jsonl
	nc      *nats.Conn        // the test's connection, to every node
	js      jetstream.JetStream
}

// startCluster creates the networks, the three nodes and the pool, and
// waits for the workers.
func startCluster(t *testing.T, ctx context.Context, image string) *cluster {
	t.Helper()
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	c := &cluster{t: t, prefix: "forqcl" + strconv.Itoa(os.Getpid()), token: hex.EncodeToString(tok),
		clients: map[string]string{}, routeIP: map[string]string{}, ip: map[string]string{}}
	t.Cleanup(c.remove)
	c.routes = c.prefix + "-routes"
	for _, n := range clusterNodes {
		c.clients[n] = c.prefix + "-clients-" + n
	}
	routeNet, clientNet := c.networks(ctx)
	c.hist = filepath.Join(t.TempDir(), "history")
	if err := os.Mkdir(c.hist, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(c.hist, 0o777); err != nil { // the workers run as uid 65532
		t.Fatal(err)
	}
	var err error
	if c.enq, err = torture.OpenLog(filepath.Join(c.hist, torture.FileEnqueued)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.enq.Close() })
	if c.faults, err = torture.OpenLog(filepath.Join(c.hist, torture.FileFaults)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.faults.Close() })

	var urls []string
	for i, n := range clusterNodes {
		c.routeIP[n] = fmt.Sprintf("%s.%d", routeNet, 11+i)
		c.ip[n] = fmt.Sprintf("%s.%d", clientNet, 64*i+11)
		urls = append(urls, "nats://"+n+":6222")
	}
	for _, n := range clusterNodes {
		// Created on the routes network, connected to its clients one,
		// then started: the broker advertises both addresses.
		c.docker(ctx, "create", "--name", c.node(n), "--network", c.routes, "--ip", c.routeIP[n], "--network-alias", n,
			"-e", "FORQ_TOKEN="+c.token, image,
			"broker", "--host", "0.0.0.0", "--data-dir", "/data", "--server-name", n,
			"--cluster-name", "forq", "--cluster-port", "6222", "--routes", strings.Join(urls, ","))
		c.docker(ctx, "network", "connect", "--ip", c.ip[n], "--alias", n, c.clients[n], c.node(n))
		c.docker(ctx, "start", c.node(n))
	}
	c.nc = c.connect(t, c.urls(clusterNodes), false)
	if c.js, err = jetstream.New(c.nc); err != nil {
		t.Fatal(err)
	}
	// The first client declares forq's topology, at R3, once the cluster
	// has a JetStream leader.
	c.waitFor(2*time.Minute, func() bool {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err = producer.New(pctx, c.nc, producer.Config{Replicas: 3})
		return err == nil
	}, func() string { return fmt.Sprintf("forq's topology never declared on the cluster: %v", err) })
	c.checkReplicas(ctx)

	var nodeURLs []string
	for _, n := range clusterNodes {
		nodeURLs = append(nodeURLs, "nats://"+n+":4222")
	}
	// The pool is on the three clients networks, which carry no route.
	pool := c.prefix + "-pool"
	c.docker(ctx, "create", "--name", pool, "--network", c.clients[clusterNodes[0]],
		"-v", c.hist+":/history",
		"-e", "FORQ_URL="+strings.Join(nodeURLs, ","), "-e", "FORQ_TOKEN="+c.token,
		"-e", "FORQ_REPLICAS=3", "-e", "FORQ_QUEUE="+forq.DefaultQueue,
		"-e", "FORQ_WORKERS=2", "-e", "FORQ_CONCURRENCY=16", "-e", "FORQ_CONNECT_TIMEOUT=60s",
		"-e", torture.EnvDir+"=/history", image, "pool")
	for _, n := range clusterNodes[1:] {
		c.docker(ctx, "network", "connect", c.clients[n], pool)
	}
	c.docker(ctx, "start", pool)
	var workers int
	c.waitFor(2*time.Minute, func() bool {
		h, err := torture.Read(c.hist)
		if err != nil {
			t.Fatal(err)
		}
		workers = len(h.Workers)
		return workers >= 2
	}, func() string { return fmt.Sprintf("only %d of the pool's 2 workers started", workers) })
	return c
}

// urls are the client URLs of nodes, by their addresses on the clients
// network.
func (c *cluster) urls(nodes []string) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, "nats://"+c.ip[n]+":4222")
	}
	return out
}

// networks creates the routes network and each node's clients network,
// all internal (no way out), on subnets of 10.213.0.0/16 and
// 10.214.0.0/16 no other network has, and returns their first three
// octets: the routes network is a /24, node i's clients network the i-th
// /26 of the other. A node's clients network holds no other node, so
// that cutting a node off the routes network cuts it off the others: a
// network the nodes shared would carry the routes too.
func (c *cluster) networks(ctx context.Context) (routes, clients string) {
	c.t.Helper()
	var b [1]byte
	var last error
	for range 8 {
		_, _ = rand.Read(b[:])
		x := 20 + int(b[0])%200
		routes, clients = fmt.Sprintf("10.213.%d", x), fmt.Sprintf("10.214.%d", x)
		if last = c.dockerTry(ctx, "network", "create", "--internal", "--subnet", routes+".0/24", c.routes); last != nil {
			continue
		}
		made := []string{c.routes}
		for i, n := range clusterNodes {
			if last = c.dockerTry(ctx, "network", "create", "--internal", "--subnet", fmt.Sprintf("%s.%d/26", clients, 64*i), c.clients[n]); last != nil {
				break
			}
			made = append(made, c.clients[n])
		}
		if last == nil {
			return routes, clients
		}
		for _, m := range made {
			_ = c.dockerTry(ctx, "network", "rm", m)
		}
	}
	c.t.Fatalf("cannot create the test's Docker networks: %v", last)
	return "", ""
}

// node is the container name of node n.
func (c *cluster) node(n string) string { return c.prefix + "-" + n }

// remove removes the containers and networks, and logs the containers'
// last lines if the test failed.
func (c *cluster) remove() {
	if c.nc != nil {
		c.nc.Close()
	}
	names := []string{c.prefix + "-pool"}
	for _, n := range clusterNodes {
		names = append(names, c.node(n))
	}
	for _, name := range names {
		if c.t.Failed() && name == names[0] {
			c.t.Logf("docker logs %s, but the tasks that succeeded (tail):\n%s", name, tail(c.poolLog(), 6000))
		} else if c.t.Failed() {
			out, _ := exec.Command("docker", "logs", "--tail", "30", name).CombinedOutput()
			c.t.Logf("docker logs %s (tail):\n%s", name, out)
		}
		_ = exec.Command("docker", "rm", "-f", "-v", name).Run()
	}
	_ = exec.Command("docker", "network", "rm", c.routes).Run()
	for _, n := range clusterNodes {
		_ = exec.Command("docker", "network", "rm", c.clients[n]).Run()
	}
}

// docker runs docker with args; it must succeed. It returns the output.
func (c *cluster) docker(ctx context.Context, args ...string) string {
	c.t.Helper()
	return composeRun(c.t, ctx, nil, append([]string{"docker"}, args...)...)
}

// dockerTry runs docker with args and returns its error, with its output.
func (c *cluster) dockerTry(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// connect connects to the brokers at urls; pinned ignores the addresses
// of the other nodes the brokers advertise, so that the connection stays
// with urls.
func (c *cluster) connect(t *testing.T, urls []string, pinned bool) *nats.Conn {
	t.Helper()
	opts := []nats.Option{nats.Token(c.token), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(2 * time.Second), nats.RetryOnFailedConnect(true)}
	if pinned {
		opts = append(opts, nats.IgnoreDiscoveredServers())
	}
	nc, err := nats.Connect(strings.Join(urls, ","), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// waitFor polls cond until it holds, or fails the test with what's
// message after d.
func (c *cluster) waitFor(d time.Duration, cond func() bool, what func() string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatal(what())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkReplicas checks that forq's streams and bucket have three replicas.
func (c *cluster) checkReplicas(ctx context.Context) {
	c.t.Helper()
	for _, name := range []string{forq.StreamTasks, "KV_" + forq.BucketResults} {
		s, err := c.js.Stream(ctx, name)
		if err != nil {
			c.t.Fatalf("stream %s: %v", name, err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			c.t.Fatalf("stream %s has %d replicas; want 3", name, r)
		}
	}
}

// leader is the node leading FORQ_TASKS, once it has three current
// replicas (two followers current and online); "" until then.
func (c *cluster) leader(ctx context.Context) string {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := c.js.Stream(ictx, forq.StreamTasks)
	if err != nil {
		return ""
	}
	cl := s.CachedInfo().Cluster
	if cl == nil || cl.Leader == "" || len(cl.Replicas) != 2 {
		return ""
	}
	for _, r := range cl.Replicas {
		if !r.Current || r.Offline {
			return ""
		}
	}
	return cl.Leader
}

// waitHealthy waits until FORQ_TASKS has a leader and its two followers
// are current, and returns the leader.
func (c *cluster) waitHealthy(ctx context.Context, d time.Duration) string {
	c.t.Helper()
	var l string
	c.waitFor(d, func() bool { l = c.leader(ctx); return l != "" }, func() string {
		return fmt.Sprintf("FORQ_TASKS has no leader with two current followers after %s", d)
	})
	return l
}

// fault appends a fault event to the history, for torture.Check to
// explain the runs it causes.
func (c *cluster) fault(kind string) {
	c.t.Helper()
	if err := c.faults.Append(torture.Event{Ev: torture.EvFault, Fault: kind}); err != nil {
		c.t.Fatal(err)
	}
}

// clusterProducer enqueues torture tasks from the test, each with an ID
// of its own, retrying a failed enqueue with the same ID until it is
// acknowledged or the producer stops, and records each acknowledged one
// in the history.
type clusterProducer struct {
	c     *cluster
	nc    *nats.Conn
	p     *producer.Producer
	phase string
	n     int           // tasks to enqueue; 0 is until stop
	every time.Duration // paces the enqueues: task i not before start + i×every

	next  atomic.Int64
	stopc chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	acks    []clusterAck
	errs    int
	lastErr error
}

// clusterAck is one acknowledged enqueue: when its (last) attempt began
// and when it was acknowledged.
type clusterAck struct {
	id         string
	sent, took time.Time
}

// produce starts a producer of phase's tasks on urls with conc enqueues
// in flight.
func (c *cluster) produce(t *testing.T, ctx context.Context, phase string, urls []string, pinned bool, n, conc int, every time.Duration) *clusterProducer {
	t.Helper()
	cp := &clusterProducer{c: c, phase: phase, n: n, every: every, stopc: make(chan struct{})}
	cp.nc = c.connect(t, urls, pinned)
	var err error
	c.waitFor(time.Minute, func() bool {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		cp.p, err = producer.New(pctx, cp.nc, producer.Config{Replicas: 3})
		return err == nil
	}, func() string { return fmt.Sprintf("producer %s: %v", phase, err) })
	start := time.Now()
	for range conc {
		cp.wg.Go(func() { cp.loop(ctx, start) })
	}
	return cp
}

func (cp *clusterProducer) loop(ctx context.Context, start time.Time) {
	for {
		i := int(cp.next.Add(1)) - 1
		if cp.n > 0 && i >= cp.n {
			return
		}
		if cp.every > 0 {
			select {
			case <-time.After(time.Until(start.Add(time.Duration(i) * cp.every))):
			case <-cp.stopc:
				return
			}
		}
		id := fmt.Sprintf("%s-%05d", cp.phase, i)
		if !cp.enqueue(ctx, id) {
			return
		}
	}
}

// enqueue enqueues task id until it is acknowledged (true) or the
// producer stops (false).
func (cp *clusterProducer) enqueue(ctx context.Context, id string) bool {
	for {
		select {
		case <-cp.stopc:
			return false
		default:
		}
		sent := time.Now()
		ectx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cp.p.Enqueue(ectx, forq.Task{ID: id, Type: torture.TypeSafe, Payload: []byte(clusterWork), Queue: forq.DefaultQueue})
		cancel()
		if err == nil {
			took := time.Now()
			if lerr := cp.c.enq.Append(torture.Event{Ev: torture.EvEnqueued, ID: id, Phase: cp.phase}); lerr != nil {
				panic(lerr) // the history is the test's record: nothing to go on with
			}
			cp.mu.Lock()
			cp.acks = append(cp.acks, clusterAck{id: id, sent: sent, took: took})
			cp.mu.Unlock()
			return true
		}
		cp.mu.Lock()
		cp.errs++
		cp.lastErr = err
		cp.mu.Unlock()
		if ctx.Err() != nil {
			return false
		}
		select {
		case <-cp.stopc:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// acked is how many enqueues were acknowledged so far.
func (cp *clusterProducer) acked() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.acks)
}

// firstAckSentAfter is the first acknowledged enqueue whose attempt began
// after t; ok is false if there is none.
func (cp *clusterProducer) firstAckSentAfter(t time.Time) (a clusterAck, ok bool) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, x := range cp.acks {
		if x.sent.After(t) && (!ok || x.took.Before(a.took)) {
			a, ok = x, true
		}
	}
	return a, ok
}

// ackedBetween counts the enqueues whose attempt began in [from, to) and
// were acknowledged.
func (cp *clusterProducer) ackedBetween(from, to time.Time) int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	n := 0
	for _, x := range cp.acks {
		if !x.sent.Before(from) && x.sent.Before(to) {
			n++
		}
	}
	return n
}

// stop stops the producer (its enqueue in flight ends first) and closes
// its connection.
func (cp *clusterProducer) stop() {
	select {
	case <-cp.stopc:
	default:
		close(cp.stopc)
	}
	cp.wg.Wait()
	cp.nc.Close()
}

// wait waits for a producer of n tasks to enqueue them all, up to d.
func (cp *clusterProducer) wait(t *testing.T, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { cp.wg.Wait(); close(done) }()
	select {
	case <-done:
		cp.nc.Close()
	case <-time.After(d):
		cp.stop()
		t.Fatalf("producer %s: %d of %d enqueues acknowledged after %s; %d errors, the last: %v", cp.phase, cp.acked(), cp.n, d, cp.errs, cp.lastErr)
	}
}

// drain waits until every acknowledged task of phase has completed a run,
// up to d, and returns the history.
func (c *cluster) drain(t *testing.T, phase string, d time.Duration) *torture.History {
	t.Helper()
	var h *torture.History
	var left int
	deadline := time.Now().Add(d)
	for {
		var err error
		if h, err = torture.Read(c.hist); err != nil {
			t.Fatal(err)
		}
		done := map[string]bool{}
		for _, r := range h.Runs {
			if r.Completed() {
				done[r.ID] = true
			}
		}
		left = 0
		for id, e := range h.Enqueued {
			if e.Phase == phase && !done[id] {
				left++
			}
		}
		if left == 0 || time.Now().After(deadline) {
			return h
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// check checks phase's tasks in h: each acknowledged one completed a
// run. It logs the phase's figures and returns the report.
func (c *cluster) check(t *testing.T, h *torture.History, phase string) *torture.Report {
	t.Helper()
	sub := *h
	sub.Enqueued = map[string]torture.Event{}
	for id, e := range h.Enqueued {
		if e.Phase == phase {
			sub.Enqueued[id] = e
		}
	}
	sub.Runs = nil
	for _, r := range h.Runs {
		if strings.HasPrefix(r.ID, phase+"-") {
			sub.Runs = append(sub.Runs, r)
		}
	}
	rep := torture.Check(&sub, torture.CheckOptions{})
	for i, l := range rep.Lost {
		if i == 10 {
			t.Errorf("... and %d more", len(rep.Lost)-10)
			break
		}
		t.Errorf("task %s lost: its enqueue was acknowledged at %s, and it ran %d times, never completed", l.ID, l.Enqueued.Format(time.TimeOnly+".000"), l.Starts)
	}
	for _, d := range rep.Duplicates {
		if d.Unexplained() {
			t.Logf("task %s ran %d times, not explained by a fault: %s", d.ID, len(d.Runs), strings.TrimSpace(describeRuns(d.Runs)))
		}
	}
	figuref(t, "%s: %d enqueues acknowledged, %d completed, %d lost; %d runs in all, %d tasks ran more than once (causes %v, %d unexplained), %d pairs of runs of one task alive at once, %d runs of tasks whose enqueue failed",
		phase, rep.Enqueued, rep.Completed, len(rep.Lost), rep.Runs, len(rep.Duplicates), rep.Explained, rep.Unexplained, len(rep.Concurrent), rep.Unacknowledged)
	return rep
}

// leaderKill SIGKILLs the FORQ_TASKS leader once a quarter of n tasks
// were acknowledged, and starts it again once enqueues and runs came
// back.
func (c *cluster) leaderKill(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	const phase = "kill"
	c.waitHealthy(ctx, time.Minute)
	cp := c.produce(t, ctx, phase, c.urls(clusterNodes), false, n, 64, 0)
	defer cp.stop()
	began := time.Now()
	c.waitFor(2*time.Minute, func() bool { return cp.acked() >= n/4 }, func() string {
		return fmt.Sprintf("only %d of %d enqueues acknowledged before the kill", cp.acked(), n/4)
	})
	leader := c.waitHealthy(ctx, time.Minute) // the one now
	moved := c.leadConsumers(ctx, leader)
	rate := float64(cp.acked()) / time.Since(began).Seconds()
	// The node died when Docker says it did (docker kill can take a
	// second to return).
	c.fault(torture.FaultBrokerKill)
	killBegan := time.Now()
	c.docker(ctx, "kill", "-s", "KILL", c.node(leader))
	killTook := time.Since(killBegan)
	killAt := c.exitedAt(ctx, c.node(leader))
	elected := c.watchElections(ctx, leader)
	var back clusterAck
	c.waitFor(time.Minute, func() bool {
		var ok bool
		back, ok = cp.firstAckSentAfter(killAt)
		return ok
	}, func() string {
		return fmt.Sprintf("no enqueue acknowledged within a minute of the SIGKILL of %s", leader)
	})
	enqIn := back.took.Sub(killAt)
	// The workers are back when a task enqueued after the kill ran.
	var ranAt time.Time
	c.waitFor(time.Minute, func() bool {
		h, err := torture.Read(c.hist)
		if err != nil {
			t.Fatal(err)
		}
		ranAt = firstRunOfSentAfter(h, cp, killAt)
		return !ranAt.IsZero()
	}, func() string { return "no task enqueued after the kill ran within a minute" })
	time.Sleep(2 * time.Second)
	c.docker(ctx, "start", c.node(leader))
	c.waitHealthy(ctx, 2*time.Minute)
	c.fault(torture.FaultBrokerUp)
	upIn := time.Since(killAt)
	cp.wait(t, 3*time.Minute)
	took := time.Since(began)
	h := c.drain(t, phase, 2*time.Minute)
	gap, gapEnd := startGap(h, phase, killAt)
	c.check(t, h, phase)
	figuref(t, "%s: %d tasks enqueued by 64 producers at %.0f/s before the SIGKILL of the FORQ_TASKS leader %s (docker kill took %s), which led the queue's consumers too (%d moved there first); %d enqueues failed meanwhile (retried with their IDs; the last error: %v)",
		phase, n, rate, leader, killTook.Round(time.Millisecond), moved, cp.errs, cp.lastErr)
	streamAt, consAt := elected()
	figuref(t, "%s: new leaders seen elected by the test (polling every 100 ms): FORQ_TASKS's %s after the kill, the last of the queue's three consumers' %s after it; the workers ran tasks again %s after that",
		phase, since(streamAt, killAt), since(consAt, killAt), since(gapEnd, consAt))
	workIn := gapEnd.Sub(back.took) // < 0: the workers were back first
	figuref(t, "%s: enqueues accepted again %s after the kill (the first acknowledged enqueue sent after it); the workers ran tasks again %s after the kill (the end of the longest pause between two run starts, %s), %s after enqueues were accepted again; a task enqueued after the kill first ran %s after that (behind those queued before it)",
		phase, enqIn.Round(time.Millisecond), gapEnd.Sub(killAt).Round(time.Millisecond), gap.Round(time.Millisecond), workIn.Round(time.Millisecond), ranAt.Sub(back.took).Round(time.Millisecond))
	fails, longest := c.pullRetries(ctx, killAt)
	figuref(t, "%s: the workers logged %d failed pulls after the kill, and waited at most %s before retrying one", phase, fails, longest)
	figuref(t, "%s: the killed node started again and current %s after the kill; the phase took %s", phase, upIn.Round(time.Millisecond), took.Round(time.Millisecond))
	if enqIn > 30*time.Second {
		t.Errorf("enqueues accepted again %s after the leader's SIGKILL; want within 30 s (the issue's target is 5 s)", enqIn)
	}
	if workIn > 10*time.Second {
		t.Errorf("the workers ran tasks again %s after enqueues were accepted again; want within 10 s (the issue's target is about 1 s)", workIn)
	}
	if longest > time.Second {
		t.Errorf("a worker waited %s before retrying a failed pull; want at most a second", longest)
	}
}

// watchElections polls, until the returned function is called, the
// leaders of FORQ_TASKS and of the default queue's consumers (its three
// levels), and that function returns when each first had a leader other
// than killed: the stream, and the last of the consumers (zero if not
// seen).
func (c *cluster) watchElections(ctx context.Context, killed string) func() (stream, consumers time.Time) {
	var mu sync.Mutex
	var streamAt time.Time
	consAt := map[string]time.Time{}
	stop := make(chan struct{})
	done := make(chan struct{})
	led := func(cl *jetstream.ClusterInfo) bool { return cl != nil && cl.Leader != "" && cl.Leader != killed }
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done(): // the test ended early
				return
			case <-time.After(100 * time.Millisecond):
			}
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			s, err := c.js.Stream(pctx, forq.StreamTasks)
			now := time.Now()
			mu.Lock()
			if err == nil && streamAt.IsZero() && led(s.CachedInfo().Cluster) {
				streamAt = now
			}
			mu.Unlock()
			for _, p := range forq.Priorities {
				name := wire.LevelConsumerName(forq.DefaultQueue, p)
				cons, err := c.js.Consumer(pctx, forq.StreamTasks, name)
				now := time.Now()
				mu.Lock()
				if _, seen := consAt[name]; !seen && err == nil && led(cons.CachedInfo().Cluster) {
					consAt[name] = now
				}
				mu.Unlock()
			}
			cancel()
		}
	}()
	return func() (time.Time, time.Time) {
		close(stop)
		<-done
		var last time.Time
		for _, at := range consAt {
			last = later(last, at)
		}
		if len(consAt) < len(forq.Priorities) {
			last = time.Time{}
		}
		return streamAt, last
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// since is how long after from t was, or "not seen" if either is zero.
func since(t, from time.Time) string {
	if t.IsZero() || from.IsZero() {
		return "not seen"
	}
	return t.Sub(from).Round(time.Millisecond).String()
}

// exitedAt is when the process of container name exited, by Docker.
func (c *cluster) exitedAt(ctx context.Context, name string) time.Time {
	c.t.Helper()
	out := strings.TrimSpace(c.docker(ctx, "inspect", "-f", "{{.State.FinishedAt}}", name))
	at, err := time.Parse(time.RFC3339Nano, out)
	if err != nil {
		c.t.Fatalf("docker inspect %s: FinishedAt %q: %v", name, out, err)
	}
	return at
}

// poolLog is the pool container's log but its lines about tasks that
// succeeded.
func (c *cluster) poolLog() string {
	out, _ := exec.Command("docker", "logs", c.prefix+"-pool").CombinedOutput()
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.Contains(l, "state=succeeded") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// retryIn is the wait of a worker's "fetch failed; retrying" log line.
var retryIn = regexp.MustCompile(`^.*time=(\S+) .*msg="fetch failed; retrying".* retry_in=(\S+)`)

// pullRetries counts the pool's failed pulls logged from t on, and
// returns the longest wait before a retry.
func (c *cluster) pullRetries(ctx context.Context, t time.Time) (n int, longest time.Duration) {
	for _, l := range strings.Split(c.poolLog(), "\n") {
		m := retryIn.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		at, err1 := time.Parse(time.RFC3339Nano, m[1])
		d, err2 := time.ParseDuration(m[2])
		if err1 != nil || err2 != nil || at.Before(t) {
			continue
		}
		n++
		longest = max(longest, d)
	}
	return n, longest
}

// leadConsumers makes node the leader of every consumer of FORQ_TASKS
// (the sources the workers pull from), by asking the others' leaders to
// step down in its favour: a SIGKILL of node then takes the stream's
// leader and the consumers' at once, the worst case for the workers. It
// returns how many consumers it moved.
func (c *cluster) leadConsumers(ctx context.Context, node string) int {
	c.t.Helper()
	s, err := c.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		c.t.Fatal(err)
	}
	moved := 0
	c.waitFor(time.Minute, func() bool {
		away := 0
		for name := range s.ConsumerNames(ctx).Name() {
			cons, err := s.Consumer(ctx, name)
			if err != nil {
				away++
				continue
			}
			cl := cons.CachedInfo().Cluster
			if cl != nil && cl.Leader == node {
				continue
			}
			away++
			moved++
			req := fmt.Appendf(nil, `{"placement":{"preferred":%q}}`, node)
			_, _ = c.nc.RequestWithContext(ctx, fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", forq.StreamTasks, name), req)
		}
		if away > 0 {
			time.Sleep(time.Second)
		}
		return away == 0
	}, func() string {
		return fmt.Sprintf("the consumers of %s would not move their leaders to %s", forq.StreamTasks, node)
	})
	return moved
}

// firstRunOfSentAfter is when the first run started of a task whose
// acknowledged enqueue was sent after t; zero if none did yet.
func firstRunOfSentAfter(h *torture.History, cp *clusterProducer, t time.Time) time.Time {
	cp.mu.Lock()
	after := map[string]bool{}
	for _, a := range cp.acks {
		if a.sent.After(t) {
			after[a.id] = true
		}
	}
	cp.mu.Unlock()
	var first time.Time
	for _, r := range h.Runs {
		if after[r.ID] && (first.IsZero() || r.Start.Before(first)) {
			first = r.Start
		}
	}
	return first
}

// startGap is the longest pause between two run starts of phase's tasks
// from t on (t itself counting as a start), and when it ended.
func startGap(h *torture.History, phase string, t time.Time) (gap time.Duration, end time.Time) {
	starts := []time.Time{t}
	for _, r := range h.Runs {
		if strings.HasPrefix(r.ID, phase+"-") && r.Start.After(t) {
			starts = append(starts, r.Start)
		}
	}
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(starts); i++ {
		if d := starts[i].Sub(starts[i-1]); d > gap {
			gap, end = d, starts[i]
		}
	}
	return gap, end
}

// partition cuts the FORQ_TASKS leader off the routes network for cut,
// while one producer writes to it alone and another to the two others.
func (c *cluster) partition(t *testing.T, ctx context.Context, cut time.Duration) {
	t.Helper()
	const phase = "part"
	victim := c.waitHealthy(ctx, time.Minute)
	var others []string
	for _, n := range clusterNodes {
		if n != victim {
			others = append(others, n)
		}
	}
	alone := c.produce(t, ctx, phase+"a", []string{"nats://" + c.ip[victim] + ":4222"}, true, 0, 4, 5*time.Millisecond)
	defer alone.stop()
	rest := c.produce(t, ctx, phase+"b", c.urls(others), true, 0, 4, 5*time.Millisecond)
	defer rest.stop()
	time.Sleep(2 * time.Second)
	c.fault(torture.FaultBrokerStop) // to the cluster, the node is gone
	c.docker(ctx, "network", "disconnect", c.routes, c.node(victim))
	cutAt := time.Now()
	time.Sleep(cut)
	healAt := time.Now()
	c.docker(ctx, "network", "connect", "--ip", c.routeIP[victim], "--alias", victim, c.routes, c.node(victim))
	c.waitHealthy(ctx, 2*time.Minute)
	c.fault(torture.FaultBrokerUp)
	healed := time.Since(healAt)
	time.Sleep(2 * time.Second)
	alone.stop()
	rest.stop()
	aloneCut, restCut := alone.ackedBetween(cutAt, healAt), rest.ackedBetween(cutAt, healAt)
	c.drain(t, phase+"a", 2*time.Minute)
	h := c.drain(t, phase+"b", 2*time.Minute)
	c.check(t, h, phase+"a")
	c.check(t, h, phase+"b")
	figuref(t, "%s: node %s (the FORQ_TASKS leader) cut off from the two others for %s; its own producer had %d enqueues acknowledged that it sent during the cut (%d failed in all, the last: %v), the two others' producer %d (%d failed); FORQ_TASKS current on three nodes %s after the heal",
		phase, victim, cut, aloneCut, alone.errs, alone.lastErr, restCut, rest.errs, healed.Round(time.Millisecond))
	if restCut == 0 {
		t.Errorf("the two nodes left acknowledged no enqueue during the %s cut; want them to go on as a majority", cut)
	}
}

// rollingRestart restarts (SIGTERM) the nodes one at a time, each
// waited for until FORQ_TASKS has three current replicas again, while a
// producer writes.
func (c *cluster) rollingRestart(t *testing.T, ctx context.Context) {
	t.Helper()
	const phase = "roll"
	c.waitHealthy(ctx, time.Minute)
	cp := c.produce(t, ctx, phase, c.urls(clusterNodes), false, 0, 8, 5*time.Millisecond)
	defer cp.stop()
	time.Sleep(time.Second)
	began := time.Now()
	var each []string
	for _, n := range clusterNodes {
		at := time.Now()
		c.fault(torture.FaultBrokerStop)
		c.docker(ctx, "restart", "-t", "10", c.node(n))
		c.waitHealthy(ctx, 2*time.Minute)
		c.fault(torture.FaultBrokerUp)
		each = append(each, fmt.Sprintf("%s %s", n, time.Since(at).Round(time.Millisecond)))
	}
	took := time.Since(began)
	time.Sleep(time.Second)
	cp.stop()
	h := c.drain(t, phase, 2*time.Minute)
	c.check(t, h, phase)
	figuref(t, "%s: the three nodes restarted one at a time in %s (each until current again: %s), while a producer wrote: %d enqueue attempts failed (retried with their IDs; the last error: %v)",
		phase, took.Round(time.Millisecond), strings.Join(each, ", "), cp.errs, cp.lastErr)
}
