package producer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watchFew is the most keys WaitMany watches by name. A KV watch of named
// keys costs the broker time that grows faster than the number of keys
// when its consumer is made (about 15 ms for 64 keys, 0.4 s for 1,024,
// 9 s for 4,096 on a 2-CPU machine), and its request must fit the broker's
// largest message (1 MiB holds about 18,000 task IDs). More keys than this
// are waited for with a watch of every key's updates and a read of the
// keys' current values, 1,024 at a time (see lastValues).
const watchFew = 64

// gets is how many reads of single current values a keysWatch has in
// flight when the broker does not serve batched ones.
const gets = 16

// errWatchClosed is the error of a watch that closed before it was
// stopped.
var errWatchClosed = errors.New("watch closed")

// keysWatch streams the current value of each of a set of keys, then a
// nil entry, then every update of them (and, when there are many keys,
// of other keys too: the caller skips those). An update may come before
// or after the current value it replaces: the caller keeps what it needs
// of either.
type keysWatch struct {
	ws []jetstream.KeyWatcher
	// updates carries the entries (see above).
	updates <-chan jetstream.KeyValueEntry
	// failed gets the error that ended the stream early.
	failed chan error
	quit   chan struct{}
	// cancel ends the reads of current values.
	cancel context.CancelFunc
	// noBatch is the producer's: set once the broker did not answer a
	// batched read, so that later waits read key by key at once.
	noBatch *atomic.Bool
	wg      sync.WaitGroup
}

// watchKeys starts a keysWatch on keys of kv. keys may be rewritten (see
// jetstream.KeyValue.WatchFiltered).
func watchKeys(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, keys []string, noBatch *atomic.Bool) (*keysWatch, error) {
	k := &keysWatch{failed: make(chan error, 1), quit: make(chan struct{}), cancel: func() {}, noBatch: noBatch}
	if len(keys) <= watchFew {
		w, err := kv.WatchFiltered(ctx, keys)
		if err != nil {
			return nil, err
		}
		k.ws, k.updates = []jetstream.KeyWatcher{w}, w.Updates()
		return k, nil
	}
	// Every update from now on, then the current values: an update made
	// between the two is seen by one or the other.
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return nil, err
	}
	k.ws = []jetstream.KeyWatcher{w}
	merged := make(chan jetstream.KeyValueEntry, 256)
	k.updates = merged
	rctx, cancel := context.WithCancel(ctx)
	k.cancel = cancel
	k.wg.Add(2)
	go k.forward(w, merged)
	go k.current(rctx, nc, kv, keys, merged)
	return k, nil
}

// fail ends the stream with err, the first error only.
func (k *keysWatch) fail(err error) {
	select {
	case k.failed <- err:
	default:
	}
}

// forward sends w's entries to merged until stop, or until w closes.
func (k *keysWatch) forward(w jetstream.KeyWatcher, merged chan<- jetstream.KeyValueEntry) {
	defer k.wg.Done()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				k.fail(errWatchClosed)
				return
			}
			if e == nil {
				continue
			}
			select {
			case merged <- e:
			case <-k.quit:
				return
			}
		case <-k.quit:
			return
		}
	}
}

// current reads the current value of each key into merged, then sends
// nil: in batches (lastValues) or, when the broker does not serve those,
// key by key, gets at a time.
func (k *keysWatch) current(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, keys []string, merged chan<- jetstream.KeyValueEntry) {
	defer k.wg.Done()
	err := errNoMultiGet
	if !k.noBatch.Load() {
		err = lastValues(ctx, nc, kv.Bucket(), keys, func(e jetstream.KeyValueEntry) bool {
			select {
			case merged <- e:
				return true
			case <-k.quit:
				return false
			}
		})
	}
	switch {
	case errors.Is(err, errNoMultiGet):
		k.noBatch.Store(true)
		k.eachValue(ctx, kv, keys, merged)
	case err != nil:
		if ctx.Err() == nil {
			k.fail(err)
		}
		return
	}
	select {
	case merged <- nil:
	case <-k.quit:
	}
}

// eachValue reads the current value of each key into merged, gets at a
// time.
func (k *keysWatch) eachValue(ctx context.Context, kv jetstream.KeyValue, keys []string, merged chan<- jetstream.KeyValueEntry) {
	next := make(chan string)
	var wg sync.WaitGroup
	for range min(gets, len(keys)) {
		wg.Go(func() {
			for key := range next {
				e, err := kv.Get(ctx, key)
				if errors.Is(err, jetstream.ErrKeyNotFound) {
					continue
				}
				if err != nil {
					if ctx.Err() == nil {
						k.fail(err)
					}
					continue
				}
				select {
				case merged <- e:
				case <-k.quit:
				}
			}
		})
	}
	for _, key := range keys {
		select {
		case next <- key:
			continue
		case <-k.quit:
		}
		break
	}
	close(next)
	wg.Wait()
}

// stop stops the watch and the goroutines that feed the stream.
func (k *keysWatch) stop() {
	close(k.quit)
	k.cancel()
	for _, w := range k.ws {
		_ = w.Stop()
	}
	k.wg.Wait()
}
