package cli

import (
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
)

// Checks of the flag groups that several commands embed. Kong calls each
// group's Validate after parsing and before the command runs, so a bad
// value is refused (exit 2, naming the flag) before anything connects,
// forks or enqueues. Since numeric flags take negative values as written
// (flags.go), every duration and count is checked here or in its command.

// Validate checks the connection flags.
func (c *ConnFlags) Validate() error {
	if c.ConnectTimeout <= 0 {
		return usageErr("--connect-timeout %s: must be positive", c.ConnectTimeout)
	}
	return nil
}

// maxReplicas is JetStream's largest replica count.
const maxReplicas = 5

// Validate checks the topology flags.
func (f *TopologyFlags) Validate() error {
	if f.Replicas < 1 || f.Replicas > maxReplicas {
		return usageErr("--replicas %d: must be 1 to %d", f.Replicas, maxReplicas)
	}
	if f.ResultTTL <= 0 {
		return usageErr("--result-ttl %s: must be positive", f.ResultTTL)
	}
	if f.DuplicateWindow < time.Second {
		return usageErr("--duplicate-window %s: must be at least 1s", f.DuplicateWindow)
	}
	return nil
}

// Validate checks the worker flags of work, pool and run.
func (f *WorkerFlags) Validate() error {
	if len(f.Queue) == 0 {
		// -q "" is an empty list to the flag parser; the worker would
		// serve the default queue, which the user did not name.
		return usageErr("--queue: invalid queue name: empty name")
	}
	for i, q := range f.Queue {
		f.Queue[i] = strings.TrimSpace(q) // "-q 'a, b'"
	}
	if err := validateQueues(f.Queue); err != nil {
		return err
	}
	if err := consumer.CheckName(f.Name); err != nil {
		return usageErr("--name: %v", err)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"--ack-wait", f.AckWait},
		{"--grace", f.Grace},
		{"--retry-base", f.RetryBase},
		{"--retry-max", f.RetryMax},
		{"--exec-kill-grace", f.ExecKillGrace},
	} {
		if d.v <= 0 {
			return usageErr("%s %s: must be positive", d.flag, d.v)
		}
	}
	if f.LockTTL < time.Second {
		return usageErr("--lock-ttl %s: must be at least 1s", f.LockTTL)
	}
	if f.Concurrency < 1 {
		return usageErr("--concurrency %d: must be at least 1", f.Concurrency)
	}
	if f.MaxTasks < 0 {
		return usageErr("--max-tasks %d: must not be negative", f.MaxTasks)
	}
	if _, _, err := f.order(); err != nil {
		return err
	}
	return f.checkSizes()
}

// checkSizes checks the size flags of the worker flags, and what goes
// with --allow-exec.
func (f *WorkerFlags) checkSizes() error {
	if _, err := parseBytes(f.HeapFloor); err != nil {
		return usageErr("--heap-floor: %v", err)
	}
	if _, err := parseBytes(f.ExecMaxOutput); err != nil {
		return usageErr("--exec-max-output: %v", err)
	}
	if len(f.ExecAllow) > 0 && !f.AllowExec {
		return usageErr("--exec-allow needs --allow-exec")
	}
	return nil
}

// Validate checks the ops flags of broker, work, pool and run.
func (f *OpsFlags) Validate() error {
	if f.MetricsPort < 0 || f.MetricsPort > 65535 {
		return usageErr("--metrics-port %d: must be 0 (off) to 65535", f.MetricsPort)
	}
	return nil
}

// Validate checks the pool flags of pool and run.
func (f *PoolFlags) Validate() error {
	if f.Workers < 0 || f.Workers > maxPoolWorkers {
		return usageErr("--workers %d: must be 0 (the number of CPUs) to %d", f.Workers, maxPoolWorkers)
	}
	if f.MaxRestarts < 1 {
		return usageErr("--max-restarts %d: must be at least 1", f.MaxRestarts)
	}
	if f.MaxTasksPerChild < 0 {
		return usageErr("--max-tasks-per-child %d: must not be negative", f.MaxTasksPerChild)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"--restart-window", f.RestartWindow},
		{"--scale-interval", f.ScaleInterval},
		{"--scale-idle", f.ScaleIdle},
		{"--ready-timeout", f.ReadyTimeout},
	} {
		if d.v <= 0 {
			return usageErr("%s %s: must be positive", d.flag, d.v)
		}
	}
	if _, err := parseBytes(f.MaxMemory); err != nil {
		return usageErr("--max-memory: %v", err)
	}
	_, _, err := f.autoscale()
	return err
}

// Validate checks the progress flags.
func (f *ProgressFlags) Validate() error {
	if f.ProgressInterval <= 0 {
		return usageErr("--progress-interval %s: must be positive", f.ProgressInterval)
	}
	return nil
}

// validateWaitTimeout checks a --wait-timeout: 0 waits forever, a negative
// one is a mistake (it used to wait forever too).
func validateWaitTimeout(d time.Duration) error {
	if d < 0 {
		return usageErr("--wait-timeout %s: must not be negative (0 waits forever)", d)
	}
	return nil
}

// validateID checks a task ID given on the command line, so that a
// malformed one is named as such rather than looked up (or canceled) in
// vain.
func validateID(id string) error {
	if err := forq.ValidateID(id); err != nil {
		return usageErr("%v", err)
	}
	return nil
}

// checkPort refuses a port flag outside lowest..65535; meaning says what
// lowest means, if anything.
func checkPort(flag string, port, lowest int, meaning string) error {
	switch {
	case (port < lowest || port > 65535) && meaning == "":
		return usageErr("--%s %d: must be %d to 65535", flag, port, lowest)
	case port < lowest || port > 65535:
		return usageErr("--%s %d: must be %d (%s) to 65535", flag, port, lowest, meaning)
	}
	return nil
}

// Validate checks the broker's ports and message size.
func (c *BrokerCmd) Validate() error {
	for _, p := range []struct {
		flag      string
		port, min int
		minMeans  string
	}{
		{"port", c.Port, 0, "a free one"},
		{"http-port", c.HTTPPort, -1, "a free one; 0 is off"},
		{"cluster-port", c.ClusterPort, 1, ""},
	} {
		if err := checkPort(p.flag, p.port, p.min, p.minMeans); err != nil {
			return err
		}
	}
	if c.MaxPayload < 0 {
		return usageErr("--max-payload %d: must not be negative (0 is NATS's default, 1 MiB)", c.MaxPayload)
	}
	return nil
}

// Validate checks the embedded broker's ports of forq run.
func (c *RunCmd) Validate() error {
	if err := checkPort("port", c.Port, 0, "a free one"); err != nil {
		return err
	}
	return checkPort("http-port", c.HTTPPort, -1, "a free one; 0 is off")
}
