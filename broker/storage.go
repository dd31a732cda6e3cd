package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// How the broker watches its storage; see watch.
const (
	// storageCheckEvery is how often the broker looks for a stream that
	// has hit a write error (the server's log tells it at once as well).
	storageCheckEvery = 2 * time.Second
	// recoverCheckEvery is how often a broker whose JetStream is disabled
	// looks for free space again.
	recoverCheckEvery = time.Second
	// maxFreeNeeded caps the free space the broker waits for before it
	// enables JetStream again after a full disk; on a small file system
	// it waits for a tenth of its size instead.
	maxFreeNeeded = 64 << 20
)

// Health returns nil if the broker can store tasks, or an error that says
// why not: wrapping forq.ErrStorageFull when its JetStream storage limit
// is reached or its disk is full (JetStream then stays disabled until
// space is freed, and comes back by itself), or saying that JetStream is
// not up.
func (s *Server) Health() error {
	if err := s.storageDown(); err != nil {
		return err
	}
	if !s.ns.JetStreamEnabled() {
		return errors.New("JetStream is not enabled")
	}
	if err := s.log.writeErr(); err != nil {
		return fmt.Errorf("%w: a write failed: %v", forq.ErrStorageFull, err)
	}
	if jsz, err := s.ns.Jsz(nil); err == nil && !jsz.Disabled && jsz.Config.MaxStore > 0 && jsz.Store >= uint64(jsz.Config.MaxStore) {
		return fmt.Errorf("%w: JetStream's storage limit is reached: %s of %s used (by default the limit is 75%% of the disk's free space when the broker first started); tasks are refused until some are done or removed",
			forq.ErrStorageFull, bytesText(jsz.Store), bytesText(uint64(jsz.Config.MaxStore)))
	}
	return nil
}

func (s *Server) storageDown() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

func (s *Server) setStorageDown(err error) {
	s.mu.Lock()
	s.down = err
	s.mu.Unlock()
}

// watch answers health requests on forq.SubjectBrokerHealth and, on a
// single node, turns a stream's write error (a full disk) into a disabled
// JetStream that comes back once space is freed. nats-server itself
// leaves such a stream failing every write, with no reply, until a
// restart. It runs until ctx ends.
func (s *Server) watch(ctx context.Context) {
	for !s.ns.ReadyForConnections(100*time.Millisecond) || !s.ns.JetStreamEnabled() {
		if ctx.Err() != nil || s.log.fatalErr() != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	nc, err := nats.Connect("", append(s.ClientOptions(), nats.Name("forq broker health"))...)
	if err != nil {
		s.ns.Errorf("forq: cannot serve health requests: %v", err)
		return
	}
	defer nc.Close()
	if _, err := nc.Subscribe(forq.SubjectBrokerHealth, func(m *nats.Msg) {
		h := topology.BrokerHealth{Healthy: true}
		if err := s.Health(); err != nil {
			full := errors.Is(err, forq.ErrStorageFull)
			h = topology.BrokerHealth{StorageFull: full, Error: err.Error()}
			if full { // the client wraps forq.ErrStorageFull itself
				h.Error = strings.TrimPrefix(h.Error, forq.ErrStorageFull.Error()+": ")
			}
		}
		b, _ := json.Marshal(h)
		_ = m.Respond(b)
	}); err != nil {
		s.ns.Errorf("forq: cannot serve health requests: %v", err)
		return
	}
	tick := time.NewTicker(storageCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.log.kick:
		case <-tick.C:
		}
		if s.clustered {
			continue // a cluster node's server disables JetStream itself
		}
		if cause := s.streamWriteErr(); cause != nil {
			s.recoverStorage(ctx, cause)
		}
	}
}

// streamWriteErr returns the write error a stream has hit, or nil.
func (s *Server) streamWriteErr() error {
	if !s.ns.JetStreamEnabled() {
		return nil
	}
	if err := s.log.writeErr(); err != nil {
		return err
	}
	h := s.ns.Healthz(&server.HealthzOptions{Details: true})
	for _, e := range h.Errors {
		if strings.Contains(e.Error, "write error") {
			return errors.New(e.Error)
		}
	}
	return nil
}

// recoverStorage disables JetStream after cause, a write error, so that
// nothing more is accepted that cannot be kept (a stream that failed a
// write fails, without a reply, every write after it, acknowledgements of
// done tasks included), waits until the data directory has room again
// and enables JetStream on the same files. Clients meanwhile get no reply
// from JetStream; a forq client asks forq.SubjectBrokerHealth why and
// reports forq.ErrStorageFull.
func (s *Server) recoverStorage(ctx context.Context, cause error) {
	cfg := s.ns.JetStreamConfig()
	if cfg == nil {
		return
	}
	cfg.StoreDir = s.dataDir // the server reports it with its own "jetstream" below it
	// forq leaves the storage limit to the server: 75% of the space free
	// when JetStream starts, plus what it holds. Computed again when it
	// comes back, it fits the disk as it is now, so that it is the limit,
	// with its clear refusals, that is reached next rather than the disk.
	cfg.MaxStore = 0
	need := freeNeeded(s.dataDir)
	down := func(free uint64) error {
		return fmt.Errorf("%w: JetStream is disabled after a write failed (%v); it is enabled again by itself once %s has %s free (now %s)",
			forq.ErrStorageFull, cause, s.dataDir, bytesText(need), bytesText(free))
	}
	free, _ := freeBytes(s.dataDir)
	s.setStorageDown(down(free))
	s.ns.Errorf("forq: %v", s.storageDown())
	if err := s.ns.ShutdownJetStream(); err != nil {
		s.ns.Errorf("forq: disable JetStream: %v", err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(recoverCheckEvery):
		}
		free, err := freeBytes(s.dataDir)
		if err != nil || free < need {
			s.setStorageDown(down(free))
			continue
		}
		s.log.clearWriteErr()
		if err := s.ns.EnableJetStream(cfg); err != nil {
			s.setStorageDown(fmt.Errorf("%w: JetStream is disabled after a write failed (%v), and enabling it again failed: %v", forq.ErrStorageFull, cause, err))
			s.ns.Errorf("forq: %v", s.storageDown())
			continue
		}
		s.setStorageDown(nil)
		limit := "unknown"
		if c := s.ns.JetStreamConfig(); c != nil {
			limit = bytesText(uint64(c.MaxStore))
		}
		s.ns.Noticef("forq: JetStream enabled again: %s free in %s, storage limit %s", bytesText(free), s.dataDir, limit)
		return
	}
}

// freeNeeded is the free space the broker waits for after a full disk:
// a tenth of the file system, at most maxFreeNeeded.
func freeNeeded(dir string) uint64 {
	size, err := fsSize(dir)
	if err != nil || size/10 > maxFreeNeeded {
		return maxFreeNeeded
	}
	return size / 10
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
