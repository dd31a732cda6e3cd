package pool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
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
		o.logger.LogAttrs(context.Background(), slog.LevelInfo, string(line),
			slog.Int("child", index), slog.Int("pid", pid), slog.String("stream", stream))
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
