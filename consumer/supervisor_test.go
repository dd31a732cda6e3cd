package consumer

import "testing"

// Whose death a worker watches for: only a process whose parent set a
// parent-death signal has a supervisor to lose; EnvSupervisorPID names it
// when set, else it is the parent the process started with.
func TestSupervisorFrom(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pdeathsig bool
		ppid      int
		env       string
		want      int
	}{
		{"no parent-death signal (nohup, systemd, a shell)", false, 42, "", 0},
		{"no parent-death signal, a stray env", false, 42, "7", 0},
		{"a supervisor of the user's", true, 42, "", 42},
		{"forq pool", true, 42, "42", 42},
		{"forq pool that died before start-up", true, 1, "42", 42},
		{"malformed env", true, 42, "x", 42},
		{"non-positive env", true, 42, "-3", 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := supervisorFrom(tc.pdeathsig, tc.ppid, tc.env); got.pid != tc.want {
				t.Errorf("got supervisor %d, want %d", got.pid, tc.want)
			}
		})
	}
}
