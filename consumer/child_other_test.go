//go:build !linux

package consumer_test

// The tests that run workers in child processes (attempts_test.go) freeze
// them with SIGSTOP and run exec tasks: they run on Linux only. TestMain
// still names these two.

const childEnv = "FORQ_CONSUMER_TEST_CHILD"

// childWorker is never started off Linux: no test starts a child there.
func childWorker(string) int { return 2 }
