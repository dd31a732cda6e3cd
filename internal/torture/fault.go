package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"

	"github.com/forqhq/forq/internal/sleep"
)

// ErrNoWorker is returned by an Injector when the pool has no worker
// process to hit at the moment (all are restarting).
var ErrNoWorker = errors.New("no worker process running")

// Injector injects faults into processes given by PID and records each in
// the history once it is sent, so that the checker can explain what it
// caused. It is safe for concurrent use.
type Injector struct {
	log *Log
}

// NewInjector records the faults it injects in log.
func NewInjector(log *Log) *Injector { return &Injector{log: log} }

// randomWorker picks one of the pool's live workers.
func randomWorker(pool int) (int, error) {
	kids := Children(pool)
	if len(kids) == 0 {
		return 0, ErrNoWorker
	}
	return kids[rand.N(len(kids))], nil
}

// KillWorker SIGKILLs a random worker process of the pool whose PID is
// given, and returns the worker's PID.
func (in *Injector) KillWorker(pool int) (int, error) {
	pid, err := randomWorker(pool)
	if err != nil {
		return 0, err
	}
	return pid, in.signal(pid, FaultKill, syscall.SIGKILL, nil)
}

// FreezeWorker SIGSTOPs a random worker process of the pool, and SIGCONTs
// it d later (or when ctx is done, whichever comes first). It returns the
// worker's PID once the worker runs again.
func (in *Injector) FreezeWorker(ctx context.Context, pool int, d time.Duration) (int, error) {
	pid, err := randomWorker(pool)
	if err != nil {
		return 0, err
	}
	if err := in.signal(pid, FaultStop, syscall.SIGSTOP, nil); err != nil {
		return pid, err
	}
	_ = sleep.For(ctx, d) // or less, if ctx ends
	err = in.signal(pid, FaultCont, syscall.SIGCONT, nil)
	if errors.Is(err, syscall.ESRCH) {
		err = nil // killed while it was frozen
	}
	return pid, err
}

// KillPool SIGKILLs the pool process; its workers, which the kernel sends
// their parent-death signal, are recorded with it. It waits until the
// pool is gone.
func (in *Injector) KillPool(pool int) error {
	kids := Children(pool)
	if err := in.signal(pool, FaultPoolKill, syscall.SIGKILL, kids); err != nil {
		return err
	}
	if !waitGone(pool, 10*time.Second) {
		return fmt.Errorf("pool %d still alive 10s after SIGKILL", pool)
	}
	return nil
}

// StopBroker sends the broker process sig: SIGKILL (a crash) or SIGTERM
// (a graceful stop). The caller starts it again and calls BrokerUp once
// it is ready.
func (in *Injector) StopBroker(pid int, sig syscall.Signal) error {
	kind := FaultBrokerStop
	if sig == syscall.SIGKILL {
		kind = FaultBrokerKill
	}
	return in.signal(pid, kind, sig, nil)
}

// BrokerUp records that the broker (PID) is ready again.
func (in *Injector) BrokerUp(pid int) error {
	return in.log.Append(Event{Ev: EvFault, Fault: FaultBrokerUp, PID: pid})
}

// signal sends the fault, then records it. Recorded after, its time is
// no earlier than the signal: a run that the process started just before
// it died is still one the fault hit (recorded before, a run started
// between the record and the signal looked unexplained), and a run that
// ended just before it is explained by the slack the checker allows after
// a run's end.
func (in *Injector) signal(pid int, kind string, sig syscall.Signal, pids []int) error {
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("%s pid %d: %w", kind, pid, err)
	}
	return in.log.Append(Event{Ev: EvFault, Fault: kind, PID: pid, PIDs: pids})
}
