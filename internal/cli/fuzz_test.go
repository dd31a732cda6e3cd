package cli

import (
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
)

// The sleep task's payload is outside input (any producer, or the nats
// CLI, can publish one): it is refused or read as a duration that is not
// negative, and a duration it names reads back the same when written out.
func FuzzSleepPayload(f *testing.F) {
	for _, s := range []string{"1s", "250ms", `"1.5s"`, " 2s\n", "-1s", "forever", `"`, `"\u0031s"`, "1h2m3.5s", "", "0", `"x"`, "9223372036854775807ns"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		d, err := sleepDuration(payload)
		if verr := builtins["sleep"].validate(payload); (verr == nil) != (err == nil) {
			t.Fatalf("payload %q: validate says %v, the handler's parse %v", payload, verr, err)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "sleep payload") {
				t.Fatalf("payload %q: error %q does not name the sleep payload", payload, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("payload %q: negative duration %s accepted", payload, d)
		}
		for _, again := range []string{d.String(), strconv.Quote(d.String())} {
			if d2, err := sleepDuration([]byte(again)); err != nil || d2 != d {
				t.Fatalf("payload %q is %s, but %q reads as %s, %v", payload, d, again, d2, err)
			}
		}
	})
}

// parseArgs parses args as the forq command line does, without running the
// command. ok is false when the parser refused them (or printed help). A
// parser is built for each (about 8 ms): kong keeps state between parses.
func parseArgs(t *testing.T, args ...string) (cli *CLI, ok bool) {
	t.Helper()
	cli = &CLI{}
	parser, err := newParser(cli, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if p := recover(); p != nil {
			if _, exit := p.(exitPanic); !exit {
				panic(p)
			}
			ok = false
		}
	}()
	_, err = parser.Parse(args)
	return cli, err == nil
}

// Numeric flags take every value written as a Go duration or integer
// would be, negative ones included ("--every -5s", "--max-attempts -1"),
// as that number, and refuse anything else: the schedule's --every and the
// counts reach forq's own checks, never the parser's "perhaps try".
func FuzzNumberFlags(f *testing.F) {
	for _, s := range []string{"5s", "-5s", "0", "-1", "1h30m", "-.5s", "+3s", "-5x", "--wait", "-h", "-", "--", "0x10", "-0x10", "1_000", "", " 1s", "-1e3", "NaN"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cli, ok := parseArgs(t, "schedule", "add", "x", "echo", "--every", v)
		want, err := time.ParseDuration(v)
		switch {
		case err == nil && !ok:
			t.Fatalf("--every %q: refused by the parser, but it is the duration %s", v, want)
		case err == nil && (cli.Schedule.Add.Every == nil || *cli.Schedule.Add.Every != want):
			t.Fatalf("--every %q: got %v, want %s", v, cli.Schedule.Add.Every, want)
		case err != nil && ok && cli.Schedule.Add.Every != nil:
			t.Fatalf("--every %q: not a duration, yet parsed as %s", v, *cli.Schedule.Add.Every)
		}
		cli, ok = parseArgs(t, "enqueue", "echo", "--max-attempts", v)
		n, err := strconv.ParseInt(v, 0, 64)
		switch {
		case err == nil && !ok:
			t.Fatalf("--max-attempts %q: refused by the parser, but it is the number %d", v, n)
		case err == nil && int64(cli.Enqueue.MaxAttempts) != n:
			t.Fatalf("--max-attempts %q: got %d, want %d", v, cli.Enqueue.MaxAttempts, n)
		}
	})
}

// A size flag (--heap-floor, --max-memory, --exec-max-output) is refused
// with a message, or read as a size that is not negative.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"16MiB", "0", "1.5GB", "512", " 2 kib ", "12XB", "lots", "-1MiB", "1e3", ".5k", "99999999999999999999GB", "9223372036854775807", "", "."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseBytes(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(strings.TrimSpace(s))) {
				t.Fatalf("%q: error %q does not quote the value", s, err)
			}
			return
		}
		if n < 0 {
			t.Fatalf("%q read as %d bytes", s, n)
		}
	})
}

// An exec task's result record (outside input: whatever is in the results
// bucket) gives forq enqueue --exec --wait an exit status of 0 to 255,
// and 0 only for a task that succeeded.
func FuzzPrintExec(f *testing.F) {
	f.Add("succeeded", []byte(`{"exit_code":0,"stdout":"hi\n","duration_ns":5}`))
	f.Add("dead", []byte(`{"exit_code":3,"stderr_tail":"boom"}`))
	f.Add("dead", []byte(`{"exit_code":-1,"signal":"killed","signal_number":9}`))
	f.Add("dead", []byte(`{"exit_code":256}`))
	f.Add("dead", []byte(`{"exit_code":0,"signal_number":128}`))
	f.Add("succeeded", []byte(`{"exit_code":-256}`))
	f.Add("canceled", []byte(`not json`))
	f.Fuzz(func(t *testing.T, state string, result []byte) {
		r := &forq.Result{ID: "a", Type: forq.TypeExec, State: forq.State(state), Result: result}
		env := &Env{Stdout: io.Discard, Stderr: io.Discard}
		code, ok := printExec(env, r)
		if !ok {
			return
		}
		if code < 0 || code > 255 {
			t.Fatalf("state %q, result %s: exit status %d", state, result, code)
		}
		if code == 0 && r.State != forq.StateSucceeded {
			t.Fatalf("state %q, result %s: exit status 0", state, result)
		}
	})
}
