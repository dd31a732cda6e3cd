package bench

import (
	"runtime"
	"slices"
	"strconv"
	"testing"
)

func TestWorkerEnv(t *testing.T) {
	share := "GOMAXPROCS=" + strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/2))
	for _, c := range []struct {
		name       string
		mode       string
		cpuShare   bool
		gomaxprocs string
		want       []string
	}{
		{"forq's workers share the CPUs", ModeForq, false, "", []string{share}},
		{"the baseline's keep Go's default", ModeBaseline, false, "", nil},
		{"unless asked", ModeBaseline, true, "", []string{share}},
		{"the environment's GOMAXPROCS reaches forq's", ModeForq, false, "3", nil},
		{"and the baseline's", ModeBaseline, true, "3", nil},
	} {
		if got := workerEnv(c.mode, 2, c.cpuShare, c.gomaxprocs); !slices.Equal(got, c.want) {
			t.Errorf("%s: workerEnv = %q, want %q", c.name, got, c.want)
		}
	}
}
