package natsembed

import (
	"fmt"
	"log/slog"
	"sync"
)

// slogAdapter forwards the server's log to slog and remembers the last
// error and the first fatal one, so a failed start can say why.
type slogAdapter struct {
	log *slog.Logger

	mu       sync.Mutex
	lastErr  string
	fatalErr string
}

func (l *slogAdapter) Noticef(format string, v ...any) { l.log.Info(fmt.Sprintf(format, v...)) }
func (l *slogAdapter) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *slogAdapter) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *slogAdapter) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }

func (l *slogAdapter) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	l.mu.Lock()
	l.lastErr = msg
	l.mu.Unlock()
}

// Fatalf records the error; nats-server's Start returns after logging it
// and leaves the shutdown to the caller.
func (l *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	l.mu.Lock()
	l.lastErr = msg
	if l.fatalErr == "" {
		l.fatalErr = msg
	}
	l.mu.Unlock()
}

func (l *slogAdapter) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastErr == "" {
		return "none logged"
	}
	return l.lastErr
}

func (l *slogAdapter) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatalErr
}
