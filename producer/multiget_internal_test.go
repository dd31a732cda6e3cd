package producer

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/forqhq/forq/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// lastValues reads the current value of each key that has one, over more
// than one request, with its revision; a deleted key reads as a delete,
// a key never written not at all.
func TestLastValues(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "LV", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	const n = multiGet + 300
	keys := make([]string, n)
	revs := map[string]uint64{}
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
		switch i % 3 {
		case 0: // never written
		case 1:
			if _, err := kv.Put(t.Context(), keys[i], []byte("old")); err != nil {
				t.Fatal(err)
			}
			r, err := kv.Put(t.Context(), keys[i], []byte(keys[i]))
			if err != nil {
				t.Fatal(err)
			}
			revs[keys[i]] = r
		case 2:
			if _, err := kv.Put(t.Context(), keys[i], []byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := kv.Delete(t.Context(), keys[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	puts, deletes := 0, 0
	err = lastValues(t.Context(), nc, "LV", keys, func(e jetstream.KeyValueEntry) bool {
		i, _ := strconv.Atoi(e.Key()[1:])
		switch {
		case e.Operation() == jetstream.KeyValuePut && i%3 == 1:
			if string(e.Value()) != e.Key() || e.Revision() != revs[e.Key()] {
				t.Errorf("key %s: value %q revision %d, want %q %d", e.Key(), e.Value(), e.Revision(), e.Key(), revs[e.Key()])
			}
			puts++
		case e.Operation() == jetstream.KeyValueDelete && i%3 == 2:
			deletes++
		default:
			t.Errorf("key %s: %s %q", e.Key(), e.Operation(), e.Value())
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := n / 3; puts != want || deletes != want {
		t.Fatalf("%d puts and %d deletes, want %d of each", puts, deletes, want)
	}
}

// A client that may not ask for a batched read (its permissions predate
// it) gets errNoMultiGet, to read key by key, not an error.
func TestLastValuesNotAllowed(t *testing.T) {
	u := testutil.Limited("p", []string{"$JS.API.>", "$KV.LV.>"}, nil)
	u.Permissions.Publish.Deny = []string{"$JS.API.DIRECT.GET.KV_LV"}
	s := testutil.ServerWithUsers(t, u)
	nc := testutil.ConnectAs(t, s, "p", func(err error) bool { return strings.Contains(err.Error(), "DIRECT.GET.KV_LV") })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "LV"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	err = lastValues(t.Context(), nc, "LV", []string{"k"}, func(jetstream.KeyValueEntry) bool { return true })
	if !errors.Is(err, errNoMultiGet) {
		t.Fatalf("lastValues: %v, want errNoMultiGet", err)
	}
	if _, err := kv.Get(t.Context(), "k"); err != nil {
		t.Fatalf("a read of one key: %v", err)
	}
}
