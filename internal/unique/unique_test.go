package unique

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
)

// TestClaimReleaseTakeOver walks a unique key through its life: claimed,
// refused to another task while its holder lives, claimed again by its
// holder, kept by a release of another task, released by its holder,
// and taken over from a holder that ended without releasing it.
func TestClaimReleaseTakeOver(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	h, err := topology.Ensure(t.Context(), js, topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k := New(js, h.Unique, record.New(h.Results))
	ctx := t.Context()
	const key = "report 2026/05" // not a plain KV key: stored under forq.KVKey
	claim := func(id, want string) {
		t.Helper()
		if got, err := k.Claim(ctx, key, id, time.Hour); err != nil || got != want {
			t.Fatalf("Claim by %s: got holder %q, %v; want %q", id, got, err, want)
		}
	}
	holderIs := func(want string) {
		t.Helper()
		e, err := h.Unique.Get(ctx, forq.KVKey(key))
		got := ""
		if err == nil {
			got = string(e.Value())
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("the key is held by %q, want %q", got, want)
		}
	}
	claim("a", "")
	holderIs("a")
	claim("b", "a")
	claim("a", "")
	if err := k.Release(ctx, key, "b"); err != nil {
		t.Fatal(err)
	}
	holderIs("a")
	if err := k.Release(ctx, key, "a"); err != nil {
		t.Fatal(err)
	}
	holderIs("")
	if err := k.Release(ctx, key, "a"); err != nil {
		t.Errorf("release of a key nobody holds: %v", err)
	}

	claim("c", "")
	// c's record is running: it lives, its claim stands.
	b, _ := json.Marshal(forq.Result{ID: "c", State: forq.StateRunning})
	if _, err := h.Results.Put(ctx, "c", b); err != nil {
		t.Fatal(err)
	}
	claim("d", "c")
	// c ended, its worker died before it released the key: taken over.
	b, _ = json.Marshal(forq.Result{ID: "c", State: forq.StateSucceeded})
	if _, err := h.Results.Put(ctx, "c", b); err != nil {
		t.Fatal(err)
	}
	claim("d", "")
	holderIs("d")
}
