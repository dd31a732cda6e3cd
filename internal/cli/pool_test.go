package cli

import (
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq/connect"
)

// poolFlags are flags of forq pool that set every flag a pool passes on
// to its workers to a value other than its default.
var poolFlags = []string{
	"pool",
	// ConnFlags
	"--url", "nats://10.1.2.3:4333", "--token", "tok", "--user", "u", "--password", "pw", "--connect-timeout", "7s",
	"--creds", "/etc/forq/w.creds", "--nkey", "/etc/forq/w.nk", "--tls-ca", "/etc/forq/ca.pem",
	"--tls-cert", "/etc/forq/w.pem", "--tls-key", "/etc/forq/w-key.pem", "--tls-server-name", "nats.internal",
	// TopologyFlags
	"--replicas", "3", "--result-ttl", "2h", "--duplicate-window", "30s",
	// WorkerFlags
	"--queue", "a,b", "--order", "weighted", "--weights", "a=3", "--concurrency", "4",
	"--ack-wait", "9s", "--grace", "20s", "--retry-base", "2s", "--retry-max", "1m", "--max-tasks", "50",
	"--lock-ttl", "8s", "--heap-floor", "32MiB", "--name", "web 1",
	"--allow-exec", "--exec-allow", "ls,sh", "--exec-max-output", "2MiB", "--exec-kill-grace", "3s",
	// OpsFlags
	"--metrics-port", "9100", "--metrics-host", "0.0.0.0",
}

// leaves calls f with the name and the value of each field of the struct
// v, and of the structs it embeds.
func leaves(v reflect.Value, f func(name string, v reflect.Value)) {
	for i := range v.NumField() {
		sf := v.Type().Field(i)
		if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
			leaves(v.Field(i), f)
			continue
		}
		f(sf.Name, v.Field(i))
	}
}

// Every worker flag of forq pool reaches its forq work children, by their
// argv or their environment: the test sets each to a value other than
// its default, parses the child's command line in the child's
// environment as forq does, and finds the pool's value (or the one the
// pool means to pass: a shorter grace, the next metrics port). A flag
// added to the structs and not passed on fails it, as does one this test
// leaves at its default.
func TestWorkerFlagsReachTheChild(t *testing.T) {
	parent, ok := parseArgs(t, poolFlags...)
	if !ok {
		t.Fatalf("the parser refused %q", poolFlags)
	}
	def, _ := parseArgs(t, "pool")
	for _, s := range []struct {
		name      string
		got, dflt any
	}{
		{"ConnFlags", parent.Pool.ConnFlags, def.Pool.ConnFlags},
		{"TopologyFlags", parent.Pool.TopologyFlags, def.Pool.TopologyFlags},
		{"WorkerFlags", parent.Pool.WorkerFlags, def.Pool.WorkerFlags},
	} {
		d := reflect.ValueOf(s.dflt)
		leaves(reflect.ValueOf(s.got), func(name string, v reflect.Value) {
			var dv reflect.Value
			leaves(d, func(n string, x reflect.Value) {
				if n == name {
					dv = x
				}
			})
			if reflect.DeepEqual(v.Interface(), dv.Interface()) {
				t.Errorf("%s.%s is %v, its default, in poolFlags: give it another value, so that this test sees it reach the child", s.name, name, v)
			}
		})
	}

	env := &Env{Stdout: io.Discard, Stderr: io.Discard, Log: newLogger(io.Discard, "json", "warn")}
	p := parent.Pool
	argv, environ, err := workerCommand(env.Log, p.ConnFlags, p.TopologyFlags, p.WorkerFlags, p.PoolFlags, nil)
	if err != nil {
		t.Fatal(err)
	}
	if exe, _ := os.Executable(); argv[0] != exe {
		t.Errorf("argv[0] %q, want this binary %q", argv[0], exe)
	}
	for _, secret := range []string{"tok", "pw", "/etc/forq/w.creds", "/etc/forq/w.nk", "/etc/forq/ca.pem", "/etc/forq/w.pem", "/etc/forq/w-key.pem", "nats.internal"} {
		if slices.Contains(argv, secret) {
			t.Errorf("argv %q holds %q: the connection flags go by the environment, since ps shows argv", argv, secret)
		}
	}
	child := parseChild(t, environ, argv[1:])
	// A program on the library, started by forq pool -- ./worker, gets
	// the same connection by connect.FromEnv.
	fromEnv, err := connect.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if want := p.ConnFlags.config(""); !reflect.DeepEqual(fromEnv, want) {
		t.Errorf("connect.FromEnv in the child's environment\n%+v\nwant the pool's\n%+v", fromEnv, want)
	}

	want := p.WorkerFlags
	want.Grace = 19 * time.Second // 20s less up to 1s
	want.MetricsPort = 9101       // the pool serves on 9100
	if !reflect.DeepEqual(child.Work.WorkerFlags, want) {
		t.Errorf("the child's worker flags\n%+v\nwant\n%+v", child.Work.WorkerFlags, want)
	}
	if child.Work.ConnFlags != p.ConnFlags {
		t.Errorf("the child's connection flags %+v, want %+v", child.Work.ConnFlags, p.ConnFlags)
	}
	if child.Work.TopologyFlags != p.TopologyFlags {
		t.Errorf("the child's topology flags %+v, want %+v", child.Work.TopologyFlags, p.TopologyFlags)
	}
	if child.LogFormat != "json" || child.LogLevel != "warn" {
		t.Errorf("the child logs %s at %s, want the pool's json at warn", child.LogFormat, child.LogLevel)
	}

	// --max-tasks-per-child is the children's --max-tasks.
	p.PoolFlags.MaxTasksPerChild = 7
	argv, environ, err = workerCommand(env.Log, p.ConnFlags, p.TopologyFlags, p.WorkerFlags, p.PoolFlags, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := parseChild(t, environ, argv[1:]).Work.MaxTasks; got != 7 {
		t.Errorf("with --max-tasks-per-child 7 the child's --max-tasks is %d", got)
	}

	// A command of the user's gets the environment alone, and its argv as
	// it is.
	argv, environ2, err := workerCommand(env.Log, p.ConnFlags, p.TopologyFlags, p.WorkerFlags, p.PoolFlags, []string{"bin/worker", "-v"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(argv, []string{"bin/worker", "-v"}) || !slices.Equal(environ2, environ) {
		t.Errorf("user's command: argv %q env %q, want its own argv and env %q", argv, environ2, environ)
	}
}

// parseChild parses a child's argv as forq does, in an environment of
// environ and no other FORQ_* variable.
func parseChild(t *testing.T, environ, args []string) *CLI {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "FORQ_") {
			t.Setenv(k, "")
			if err := os.Unsetenv(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	child, ok := parseArgs(t, args...)
	if !ok {
		t.Fatalf("forq refused the child's command line %q in env %q", args, environ)
	}
	return child
}
