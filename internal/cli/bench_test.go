package cli

import (
	"bytes"
	"strings"
	"testing"
)

// A bad value of a growth flag of forq bench, or an output path it could
// not write, is a usage error that names the flag, before any broker
// starts.
func TestBenchGrowthFlagsRefused(t *testing.T) {
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--backlog", "-1"}, "--backlog"},
		{[]string{"--payloads", "64,8"}, "--payloads"},
		{[]string{"--payloads", "1048576"}, "--payloads"},
		{[]string{"--load-fractions", "0.5,0"}, "--load-fractions"},
		{[]string{"--load-fractions", "1.5"}, "--load-fractions"},
		{[]string{"--load-fractions", "NaN"}, "--load-fractions"},
		{[]string{"--html", "/nonexistent-forq-dir/r.html"}, "--html"},
		{[]string{"--svg-dir", "/proc/forq-charts"}, "--svg-dir"},
		{[]string{"--duplicate-window", "0s"}, "--duplicate-window"},
	} {
		var stdout, stderr bytes.Buffer
		code := Main(append([]string{"bench", "--url", "nats://127.0.0.1:1"}, c.args...), strings.NewReader(""), &stdout, &stderr)
		if code != ExitUsage || !strings.Contains(stderr.String(), c.flag) {
			t.Errorf("forq bench %s: exit %d, stderr %q; want %d and %s named", strings.Join(c.args, " "), code, stderr.String(), ExitUsage, c.flag)
		}
	}
}

// The growth flags are off by default, and reach the run's options.
func TestBenchGrowthFlagsParsed(t *testing.T) {
	cli, ok := parseArgs(t, "bench")
	if !ok {
		t.Fatal("the parser refused forq bench")
	}
	if g := cli.Bench.BenchGrowthFlags.options(); g.Backlog != 0 || g.Payloads != nil || g.LoadFractions != nil {
		t.Errorf("defaults: got %+v, want every growth measurement off", g)
	}
	cli, _ = parseArgs(t, "bench", "--backlog", "1000000", "--payloads", "64,4096,262144", "--load-fractions", "0.25,0.5,0.75")
	g := cli.Bench.BenchGrowthFlags.options()
	if g.Backlog != 1000000 || len(g.Payloads) != 3 || g.Payloads[2] != 262144 || len(g.LoadFractions) != 3 || g.LoadFractions[0] != 0.25 {
		t.Errorf("got %+v, want the flags' values", g)
	}
	if err := cli.Bench.BenchGrowthFlags.validate(); err != nil {
		t.Errorf("validate: %v, want nil", err)
	}
}
