package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// TestInitDeclaresOnceAndReportsDifferences: forq init creates what is
// missing and names it; run again it changes nothing; against a stream
// made with other settings by hand it names each difference, exits 1, and
// leaves the settings as they were (but for forq's additive upgrade,
// direct access, which it adds).
func TestInitDeclaresOnceAndReportsDifferences(t *testing.T) {
	b := startBroker(t, "", 0) // forq broker declares the streams and buckets on start
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	eventually(t, 10*time.Second, func() bool {
		_, err := js.KeyValue(t.Context(), forq.BucketUnique)
		return err == nil
	}, "forq broker did not declare forq's streams and buckets")
	// Take some away, as if the broker were a plain nats-server.
	if err := js.DeleteStream(t.Context(), forq.StreamDead); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(t.Context(), forq.BucketUnique); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := run(t, nil, env, "init", "--queue", "default,mail")
	t.Logf("forq init (first):\n%s%s", stdout, stderr)
	if code != 0 {
		t.Fatalf("forq init: exit %d", code)
	}
	want(t, "forq init (first)", stdout,
		`(?m)^exists stream FORQ_TASKS$`,
		`(?m)^created stream FORQ_DEAD$`,
		`(?m)^exists KV bucket forq_results$`,
		`(?m)^created KV bucket forq_unique$`,
		`(?m)^created consumer default--high$`,
		`(?m)^created consumer default$`,
		`(?m)^created consumer default--low$`,
		`(?m)^created consumer mail--high$`,
		`(?m)^created consumer mail$`,
		`(?m)^created consumer mail--low$`,
	)
	before := streamConfig(t, js, forq.StreamTasks)

	code, stdout, stderr = run(t, nil, env, "init", "--queue", "default,mail")
	t.Logf("forq init (second):\n%s%s", stdout, stderr)
	if code != 0 {
		t.Fatalf("forq init again: exit %d", code)
	}
	if n := strings.Count(stdout, "\n"); n != 13 || strings.Count(stdout, "exists   ") != 13 {
		t.Errorf("forq init again: %d lines; want 13, each of something that exists", n)
	}
	if after := streamConfig(t, js, forq.StreamTasks); after.Description != before.Description || after.Replicas != before.Replicas || after.AllowDirect != before.AllowDirect {
		t.Errorf("FORQ_TASKS changed by a second init: %+v, was %+v", after, before)
	}

	// FORQ_DEAD as an older forq made it (no direct access), with a max
	// age set by hand.
	cfg := streamConfig(t, js, forq.StreamDead)
	cfg.AllowDirect, cfg.MaxAge = false, time.Hour
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = run(t, nil, env, "init", "--result-ttl", "1h")
	t.Logf("forq init --result-ttl 1h against FORQ_DEAD with a max age:\n%s%s", stdout, stderr)
	if code != 1 {
		t.Errorf("forq init with differences: exit %d; want 1", code)
	}
	want(t, "forq init with differences", stdout,
		`(?m)^upgraded stream FORQ_DEAD: added direct access\n differs: max age 1h0m0s \(asked unlimited\)$`,
		`(?m)^exists KV bucket forq_results\n differs: TTL 24h0m0s \(asked 1h0m0s\)$`,
		`(?m)^exists KV bucket forq_cancel\n differs: TTL 24h0m0s \(asked 1h0m0s\)$`,
	)
	want(t, "forq init with differences (stderr)", stderr, `3 of forq's streams, buckets or consumers differ from what the flags ask`)
	if got := streamConfig(t, js, forq.StreamDead); got.MaxAge != time.Hour || !got.AllowDirect {
		t.Errorf("FORQ_DEAD after init: max age %s, direct %v; want its 1h kept and direct access added", got.MaxAge, got.AllowDirect)
	}
	kv, err := js.KeyValue(t.Context(), forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 24*time.Hour {
		t.Errorf("forq_results TTL %s after init --result-ttl 1h; want 24h kept", st.TTL())
	}
}

func streamConfig(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config
}

// TestInitDuplicateWindow: --duplicate-window sets FORQ_TASKS's and
// FORQ_DEAD's duplicate window when forq init creates them, is named as a
// difference (and not changed) on streams made with another, and a window
// under a second is refused before anything is declared.
func TestInitDuplicateWindow(t *testing.T) {
	b := startBroker(t, "", 0) // declares the streams with the default window
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	eventually(t, 10*time.Second, func() bool {
		_, err := js.KeyValue(t.Context(), forq.BucketUnique)
		return err == nil
	}, "forq broker did not declare forq's streams and buckets")

	code, stdout, stderr := run(t, nil, env, "init", "--duplicate-window", "0.5s")
	t.Logf("forq init --duplicate-window 0.5s:\n%s%s", stdout, stderr)
	if code != 2 || stdout != "" {
		t.Errorf("forq init --duplicate-window 0.5s: exit %d, stdout %q; want 2 and nothing declared", code, stdout)
	}
	want(t, "forq init --duplicate-window 0.5s", stderr, `--duplicate-window 500ms: must be at least 1s`)

	code, stdout, stderr = run(t, nil, env, "init", "--duplicate-window", "30s")
	t.Logf("forq init --duplicate-window 30s on the broker's streams:\n%s%s", stdout, stderr)
	if code != 1 {
		t.Errorf("forq init --duplicate-window 30s against streams of 2m: exit %d; want 1", code)
	}
	want(t, "forq init --duplicate-window 30s", stdout,
		`(?m)^exists stream FORQ_TASKS\n differs: duplicate window 2m0s \(asked 30s\)$`,
		`(?m)^exists stream FORQ_DEAD\n differs: duplicate window 2m0s \(asked 30s\)$`,
	)
	if got := streamConfig(t, js, forq.StreamTasks).Duplicates; got != forq.DefaultDuplicateWindow {
		t.Errorf("FORQ_TASKS duplicate window %s after init --duplicate-window 30s; want %s kept", got, forq.DefaultDuplicateWindow)
	}

	for _, s := range []string{forq.StreamTasks, forq.StreamDead} {
		if err := js.DeleteStream(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr = run(t, nil, env, "init", "--duplicate-window", "30s")
	t.Logf("forq init --duplicate-window 30s, no streams:\n%s%s", stdout, stderr)
	if code != 0 {
		t.Errorf("forq init --duplicate-window 30s: exit %d; want 0", code)
	}
	for _, s := range []string{forq.StreamTasks, forq.StreamDead} {
		if got := streamConfig(t, js, s).Duplicates; got != 30*time.Second {
			t.Errorf("%s created by init --duplicate-window 30s: duplicate window %s", s, got)
		}
	}
}
