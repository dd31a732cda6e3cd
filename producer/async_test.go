package producer

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestParsePubAck(t *testing.T) {
	status := func(code, desc string) *nats.Msg {
		return &nats.Msg{Header: nats.Header{"Status": {code}, "Description": {desc}}}
	}
	for _, c := range []struct {
		name string
		m    *nats.Msg
		seq  uint64
		dup  bool
		err  string // part of the error, "" for none
	}{
		{"stored", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS","seq":42}`)}, 42, false, ""},
		{"duplicate", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS","seq":7,"duplicate":true}`)}, 7, true, ""},
		// As nats-server 2.15 writes it.
		{"duplicate as the broker writes it", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS","seq":7,"duplicate": true}`)}, 7, true, ""},
		{"not a duplicate", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS","seq":7,"duplicate": false}`)}, 7, false, ""},
		{"domain", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS","domain":"hub","seq": 18446744073709551615}`)}, 18446744073709551615, false, ""},
		{"refused", &nats.Msg{Data: []byte(`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"FORQ_TASKS","seq":0}`)}, 0, false, "maximum messages exceeded (code 503, error 10077)"},
		{"no responders", status("503", ""), 0, false, "no stream takes this subject"},
		{"other status", status("408", "Request Timeout"), 0, false, "408 Request Timeout"},
		{"empty", &nats.Msg{}, 0, false, "empty acknowledgement"},
		{"no seq", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS"}`)}, 0, false, "malformed"},
		{"bad seq", &nats.Msg{Data: []byte(`{"stream":"FORQ_TASKS","seq":"x"}`)}, 0, false, "malformed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := parsePubAck(c.m)
			if c.err != "" {
				if a.err == nil || !strings.Contains(a.err.Error(), c.err) {
					t.Fatalf("error %v, want one with %q", a.err, c.err)
				}
				return
			}
			if a.err != nil || a.seq != c.seq || a.dup != c.dup {
				t.Fatalf("got seq %d dup %v err %v, want seq %d dup %v", a.seq, a.dup, a.err, c.seq, c.dup)
			}
		})
	}
	if a := parsePubAck(status("503", "")); !errors.Is(a.err, nats.ErrNoResponders) {
		t.Fatalf("no responders: %v does not wrap nats.ErrNoResponders", a.err)
	}
}
