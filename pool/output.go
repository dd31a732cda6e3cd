package pool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// maxLine is the longest line passed through whole; a longer one is split
// into lines of this size.
const maxLine = 64 << 10

// output passes the children's output lines through to the configured
// writers or logger. Lines of all children share one lock, so they are never
// interleaved.
type output struct {
	mu         sync.Mutex
	stdout     io.Writer
	stderr     io.Writer
	logger     *slog.Logger
	structured bool
	noPrefix   bool
}

// copyLines reads r to its end or first error and passes each line to
// o.emit. A last line without a newline is passed too.
func (o *output) copyLines(r io.Reader, index, pid int, stream string) {
	br := bufio.NewReaderSize(r, maxLine)
	var prefix []byte
	if !o.noPrefix {
		prefix = []byte("[" + strconv.Itoa(index) + " " + strconv.Itoa(pid) + "] ")
	}
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			o.emit(prefix, bytes.TrimSuffix(line, []byte("\n")), index, pid, stream)
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		default: // io.EOF, os.ErrClosed (drain timeout), or a read error
			return
		}
	}
}

func (o *output) emit(prefix, line []byte, index, pid int, stream string) {
	if o.structured {
		o.emitRecord(line, index, pid, stream)
		return
	}
	w := o.stdout
	if stream == "stderr" {
		w = o.stderr
	}
	buf := make([]byte, 0, len(prefix)+len(line)+1)
	buf = append(append(append(buf, prefix...), line...), '\n')
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = w.Write(buf) // nowhere to report a failing output writer
}

// emitRecord writes a line of a child as a record on the logger: the
// child's own record, with child and pid added, if the line is a JSON
// object (a log/slog JSON record, say); else a record at level INFO whose
// message is the line, with child, pid and stream. Records below the
// logger's level are dropped, as its own are.
func (o *output) emitRecord(line []byte, index, pid int, stream string) {
	ctx := context.Background()
	r, ok := childRecord(line)
	if !ok {
		r = slog.NewRecord(time.Now(), slog.LevelInfo, string(line), 0)
		r.AddAttrs(slog.String("stream", stream))
	}
	if !o.logger.Enabled(ctx, r.Level) {
		return
	}
	r.AddAttrs(slog.Int("child", index), slog.Int("pid", pid))
	_ = o.logger.Handler().Handle(ctx, r) // nowhere to report a failing log
}

// childRecord parses line as a JSON object: its "time" (RFC 3339),
// "level" (as slog writes it: INFO, WARN+2, ...) and "msg" make the
// record's, and its other fields, in their order, its attributes, their
// values as they were written. A "time", "level" or "msg" of another form
// stays an attribute; without a time the record is stamped now, without
// a level it is INFO. Its own "child" and "pid", if any, are dropped for
// the pool's. ok is false if line is not one JSON object.
func childRecord(line []byte) (r slog.Record, ok bool) {
	line = bytes.TrimSpace(line)
	if len(line) < 2 || line[0] != '{' || !json.Valid(line) {
		return r, false
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil { // the '{'
		return r, false
	}
	var (
		t     time.Time
		level = slog.LevelInfo
		msg   string
		attrs []slog.Attr
	)
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return r, false
		}
		key, _ := k.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return r, false
		}
		var s string
		isString := json.Unmarshal(v, &s) == nil
		switch {
		case key == slog.TimeKey && isString && t.IsZero() && t.UnmarshalText([]byte(s)) == nil:
		case key == slog.LevelKey && isString && level.UnmarshalText([]byte(s)) == nil:
		case key == slog.MessageKey && isString:
			msg = s
		case key == "child" || key == "pid":
			// emitRecord adds the pool's, which are the truth (forq
			// work logs its own PID too): no key twice.
		default:
			attrs = append(attrs, slog.Any(key, rawJSON(v)))
		}
	}
	if t.IsZero() {
		t = time.Now()
	}
	r = slog.NewRecord(t, level, msg, 0)
	r.AddAttrs(attrs...)
	return r, true
}

// rawJSON is a JSON value as a child wrote it: a JSON handler writes it
// unchanged, a text handler as text (a string without its quotes).
type rawJSON []byte

// MarshalJSON implements json.Marshaler.
func (v rawJSON) MarshalJSON() ([]byte, error) { return v, nil }

// MarshalText implements encoding.TextMarshaler.
func (v rawJSON) MarshalText() ([]byte, error) {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return []byte(s), nil
	}
	return v, nil
}
