package broker

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	srvlog "github.com/nats-io/nats-server/v2/logger"
	"github.com/nats-io/nats-server/v2/server"
)

// serverLog is the nats-server's logger. It keeps the first fatal error
// the server reports (it reports them, for example a port in use, and
// stops starting) so that WaitReady can name it, and writes the log to
// standard error when asked to. A fatal error never exits the process:
// nats-server's own logger would.
//
// It also keeps the first write error a stream or store reports (a full
// disk), and kicks the broker's storage watch (see watch) at once.
type serverLog struct {
	out  server.Logger // nil: the log is not written
	kick chan struct{}

	mu    sync.Mutex
	fatal error
	werr  error
}

func newServerLog(write, debug bool) *serverLog {
	l := &serverLog{kick: make(chan struct{}, 1)}
	if write {
		colors := false
		if st, err := os.Stderr.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			colors = true
		}
		l.out = srvlog.NewStdLogger(true, debug, debug, colors, true)
	}
	return l
}

// fatalErr returns the first fatal error the server reported, or nil.
func (l *serverLog) fatalErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}

func (l *serverLog) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	if l.fatal == nil {
		l.fatal = errors.New(msg)
	}
	l.mu.Unlock()
	if l.out != nil {
		l.out.Errorf("%s", msg)
	}
}

func (l *serverLog) Noticef(format string, v ...any) {
	if l.out != nil {
		l.out.Noticef(format, v...)
	}
}

func (l *serverLog) Warnf(format string, v ...any) {
	if l.out != nil {
		l.out.Warnf(format, v...)
	}
}

// writeErr returns the first write error logged since clearWriteErr, or
// nil.
func (l *serverLog) writeErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.werr
}

func (l *serverLog) clearWriteErr() {
	l.mu.Lock()
	l.werr = nil
	l.mu.Unlock()
}

func (l *serverLog) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if low := strings.ToLower(msg); strings.Contains(low, "critical write error") || strings.Contains(low, "no space left on device") {
		l.mu.Lock()
		if l.werr == nil {
			l.werr = errors.New(msg)
		}
		l.mu.Unlock()
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	if l.out != nil {
		l.out.Errorf("%s", msg)
	}
}

func (l *serverLog) Debugf(format string, v ...any) {
	if l.out != nil {
		l.out.Debugf(format, v...)
	}
}

func (l *serverLog) Tracef(format string, v ...any) {
	if l.out != nil {
		l.out.Tracef(format, v...)
	}
}
