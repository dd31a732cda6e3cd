package topology

import (
	"context"
	"fmt"
	"strconv"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Feature is something forq does with a part of the NATS server that came
// in a given release. Require checks a server against it.
type Feature struct {
	// Name says what the feature is, as the error of Require names it.
	Name string
	// Version is the first nats-server release that has it.
	Version string
	// Level is the JetStream API level of that release (NATS 2.11 and
	// later report theirs with every stream's info).
	Level int
}

// The features forq checks the server for. The README's "Server versions"
// has the same table; the versions were found by running forq against
// nats-server releases (internal/e2e servers_test.go).
var (
	// Base is forq at all: its task stream and its buckets of locks and
	// unique keys use per-message TTLs (NATS 2.11, API level 1). On an
	// older server nothing of forq starts.
	Base = Feature{Name: "forq (its per-message TTLs: task deadlines, locks, unique keys)", Version: "2.11.0", Level: 1}
	// Delayed is a delayed task: a message schedule "@at" a time (NATS
	// 2.12, API level 2).
	Delayed = Feature{Name: "a delayed task (a message schedule)", Version: "2.12.0", Level: 2}
	// Periodic is a periodic schedule: a message schedule "@every" an
	// interval or on a cron expression, in a time zone (NATS 2.14, API
	// level 4; 2.12 schedules only "@at" a time).
	Periodic = Feature{Name: "a periodic schedule (a repeating message schedule)", Version: "2.14.0", Level: 4}
)

// Stream metadata keys a NATS 2.11 or later server adds to a stream's info:
// its version and its JetStream API level.
const (
	metaServerVersion = "_nats.ver"
	metaServerLevel   = "_nats.level"
)

// Require returns nil if the server nc is connected to has feature f, and
// an error wrapping forq.ErrServerTooOld that names f, the version it
// needs and the server's version if not. tasks, if not nil, is the
// handle of forq.StreamTasks: the server that answers for it (on a
// cluster, the stream's leader, which runs its schedules) must have f too.
// Its cached info is read first, and asked for again only when it says
// the server is too old (it may have been upgraded since). A server whose
// version cannot be read (the connection is down) passes: what is asked
// of it then fails on its own.
func Require(ctx context.Context, nc *nats.Conn, tasks jetstream.Stream, f Feature) error {
	if v := nc.ConnectedServerVersion(); v != "" && !atLeast(v, f.Version) {
		return tooOld(f, "at "+nc.ConnectedUrlRedacted(), v)
	}
	if tasks == nil || leaderHas(tasks.CachedInfo(), f) == nil {
		return nil
	}
	info, err := tasks.Info(ctx)
	if err != nil {
		// The stream's info cannot be had now; the connected server has f.
		return nil //nolint:nilerr // the check is best effort past the connected server
	}
	return leaderHas(info, f)
}

// leaderHas checks the JetStream API level that the server which answered
// for info reports (NATS 2.11 and later do) against f's.
func leaderHas(info *jetstream.StreamInfo, f Feature) error {
	if info == nil {
		return nil
	}
	md := info.Config.Metadata
	// No level: a server older than 2.11, which the connected server's
	// version has answered for.
	if level, ok := parseLevel(md[metaServerLevel]); ok && level < f.Level {
		v := md[metaServerVersion]
		if v == "" {
			v = "of JetStream API level " + md[metaServerLevel]
		}
		return tooOld(f, "that leads stream "+forq.StreamTasks, v)
	}
	return nil
}

func tooOld(f Feature, where, version string) error {
	return fmt.Errorf("%w: %s needs nats-server %s or later; the server %s is %s", forq.ErrServerTooOld, f.Name, f.Version, where, version)
}

// atLeast reports whether server version v ("2.11.17", "2.12.0-RC.1") is
// least or later. A pre-release counts as its release; a version that does
// not parse counts as new enough.
func atLeast(v, least string) bool {
	a, ok := parseVersion(v)
	if !ok {
		return true
	}
	b, _ := parseVersion(least)
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return true
}

// parseLevel reads a JetStream API level.
func parseLevel(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// parseVersion reads major.minor.patch from the front of v.
func parseVersion(v string) ([3]int, bool) {
	var p [3]int
	n, _ := fmt.Sscanf(v, "%d.%d.%d", &p[0], &p[1], &p[2])
	return p, n >= 2
}
