package kvcas

import (
	"errors"
	"testing"
	"time"

	"github.com/forqhq/forq/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// TestPut: a write on the key's last revision lands, with its TTL; one on
// an older revision, a Create of an existing key and an Update or Delete
// on a wrong revision are conflicts.
func TestPut(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "cas", LimitMarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(t.Context(), "k", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	next, err := Put(t.Context(), js, "cas", "k", []byte("b"), rev, time.Second)
	if err != nil {
		t.Fatalf("put on the last revision: %v", err)
	}
	if e, err := kv.Get(t.Context(), "k"); err != nil || string(e.Value()) != "b" || e.Revision() != next {
		t.Fatalf("got %v %v, want b at revision %d", e, err, next)
	}
	if _, err := Put(t.Context(), js, "cas", "k", []byte("c"), rev, 0); !IsConflict(err) {
		t.Errorf("put on an old revision: got %v, want a conflict", err)
	}
	_, err = kv.Create(t.Context(), "k", []byte("d"))
	if !IsConflict(err) {
		t.Errorf("create of an existing key: got %v, want a conflict", err)
	}
	if _, err := kv.Update(t.Context(), "k", []byte("e"), rev); !IsConflict(err) {
		t.Errorf("update on an old revision: got %v, want a conflict", err)
	}
	if err := kv.Delete(t.Context(), "k", jetstream.LastRevision(rev)); !IsConflict(err) {
		t.Errorf("delete on an old revision: got %v, want a conflict", err)
	}
	if IsConflict(nil) || IsConflict(errors.New("other")) || IsConflict(jetstream.ErrKeyNotFound) {
		t.Error("IsConflict is true for an error that is no conflict")
	}
	// The TTL of the put: the entry expires.
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := kv.Get(t.Context(), "k")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}, "the entry written with a TTL of 1s did not expire")
}
