package pull

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Tasks the broker queues itself.
//
// A delayed task, or a periodic one, is queued by the broker when its
// schedule fires: it is not published, and no hint subscription sees it.
// A high or low level such a schedule targets is marked used, so that an
// idle engine re-checks it every IdlePoll (see hints.go): the engine
// subscribes to the schedules of its queues (forq.schedule.<queue>.*) and
// to the periodic definitions (forq.periodic.>), whose Nats-Schedule-Target
// header names the level, before it declares its consumers; then it looks
// for schedules already stored. One found for a queue marks both its
// levels used, and a periodic definition found marks every level used: the
// look-up reads one message, not the level of each.

// lookupTimeout bounds the look-ups of stored schedules, all together.
const lookupTimeout = 2 * time.Second

// watchSchedules subscribes to the schedules that target the levels in
// used (by subject), and marks used those that schedules already stored
// may target. It returns the subscriptions.
func watchSchedules(ctx context.Context, cfg *Config, used map[string]*atomic.Bool) (subs []*nats.Subscription, err error) {
	defer func() {
		if err != nil {
			unsubscribeAll(subs)
			subs = nil
		}
	}()
	mark := func(m *nats.Msg) {
		if u := used[m.Header.Get(jetstream.ScheduleTargetHeader)]; u != nil {
			u.Store(true)
		}
	}
	for _, q := range cfg.Queues {
		if err := forq.ValidateQueue(q); err != nil {
			return subs, err
		}
		sub, err := cfg.Conn.Subscribe(wire.ScheduleSubject(q, "*"), mark)
		if err != nil {
			return subs, err
		}
		subs = append(subs, sub)
	}
	sub, err := cfg.Conn.Subscribe(forq.SubjectPeriodicPrefix+">", mark)
	if err != nil {
		return subs, err
	}
	subs = append(subs, sub)
	// Bounded: a broker that does not answer (or credentials that do
	// not allow the look-ups) costs the start lookupTimeout at most.
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	stored := func(filter string) bool {
		_, err := cfg.Stream.GetLastMsgForSubject(lctx, filter)
		return !errors.Is(err, jetstream.ErrMsgNotFound) // an error that is not "none" counts as some
	}
	if stored(forq.SubjectPeriodicPrefix + ">") {
		for _, u := range used {
			u.Store(true)
		}
		return subs, nil
	}
	for _, q := range cfg.Queues {
		if stored(wire.ScheduleSubject(q, "*")) {
			for _, p := range forq.Priorities {
				if u := used[wire.LevelSubject(q, p)]; u != nil {
					u.Store(true)
				}
			}
		}
	}
	return subs, nil
}

func unsubscribeAll(subs []*nats.Subscription) {
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
}
