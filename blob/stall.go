package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// DefaultStallTimeout is how long DefaultHTTPClient waits for the next byte of a
// response body before giving up on it. Nix gives up on a transfer after 300 s without
// progress; shoal gives up on its own sources well before that, so a NAR can still come
// from another source while Nix waits.
const DefaultStallTimeout = 60 * time.Second

// ErrStalled reports a response body that stopped sending bytes.
var ErrStalled = errors.New("response body stalled")

// StallTimeout wraps rt so that a Read of a response body that waits more than idle
// for bytes fails with ErrStalled instead of blocking forever. Headers are bounded by
// the transport's ResponseHeaderTimeout; a body can take minutes, so there is no overall
// deadline, only this bound on the server's silence. Time the reader spends between
// Reads does not count.
func StallTimeout(rt http.RoundTripper, idle time.Duration) http.RoundTripper {
	return &stallTransport{next: rt, idle: idle}
}

type stallTransport struct {
	next http.RoundTripper
	idle time.Duration
}

func (s *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := s.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	b := &stallBody{rc: resp.Body, ctx: ctx, cancel: cancel, idle: s.idle}
	b.timer = time.AfterFunc(s.idle, b.expire)
	b.timer.Stop() // armed only while a Read waits
	resp.Body = b
	return resp, nil
}

// stallBody bounds the time each Read waits for bytes. Only time spent inside Read
// counts: a reader that is slow to come back (busy writing what it read) is not a
// silent server. When the bound passes, the request's context is cancelled, which
// unblocks the pending Read.
type stallBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration
	timer  *time.Timer

	mu       sync.Mutex
	reading  bool
	deadline time.Time
	once     sync.Once
}

func (b *stallBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	b.reading, b.deadline = true, time.Now().Add(b.idle)
	b.timer.Reset(b.idle)
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	b.reading = false
	b.timer.Stop()
	b.mu.Unlock()
	if err != nil && err != io.EOF && errors.Is(context.Cause(b.ctx), ErrStalled) {
		err = fmt.Errorf("%w: no bytes for %s", ErrStalled, b.idle)
	}
	return n, err
}

// expire runs when the timer fires. A timer armed by an earlier Read may fire late,
// after a new Read began: only a Read past its own deadline counts as a stall.
func (b *stallBody) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.reading {
		return
	}
	if left := time.Until(b.deadline); left > 0 {
		b.timer.Reset(left)
		return
	}
	b.cancel(ErrStalled)
}

func (b *stallBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.timer.Stop()
		b.cancel(nil)
	})
	return err
}
