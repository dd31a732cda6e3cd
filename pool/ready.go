package pool

import "sync"

// ready signals readiness once and keeps the result for later calls.
var ready = sync.OnceValue(signalReady)

// Ready tells the pool supervising this process that it is ready: its
// worker is running (for a worker built on package consumer, call it once
// consumer.New has returned, just before Worker.Run). Until a child is
// ready, its exits count toward the pool's restart-storm limit and its
// restart delay grows; once it is ready, a crash is restarted after
// [Config.BackoffMin] and never stops the pool (see [Config.MaxRestarts]).
//
// Ready writes one byte to the file descriptor named by [EnvReadyFD], closes
// it and removes EnvReadyFD from the environment, so that the processes
// this one starts do not inherit either. It does nothing and returns nil
// when EnvReadyFD is not set (the process does not run under a pool), and
// on systems other than Unix. Calls after the first return the first's
// result. It returns an error if EnvReadyFD does not name an open pipe, or
// if the write fails (the pool is gone); the process may carry on
// regardless: the pool then deems it ready after [Config.ReadyTimeout].
//
// A child written in another language does the same: write a byte to the
// descriptor $FORQ_READY_FD and close it.
func Ready() error {
	return ready()
}
