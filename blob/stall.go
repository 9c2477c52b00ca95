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

// StallTimeout wraps rt so that a response body that delivers no byte for idle fails
// with ErrStalled instead of blocking its reader forever. Headers are bounded by the
// transport's ResponseHeaderTimeout; a body can take minutes, so there is no overall
// deadline, only this bound on silence.
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
	b.timer = time.AfterFunc(s.idle, func() { cancel(ErrStalled) })
	resp.Body = b
	return resp, nil
}

// stallBody re-arms its timer whenever bytes arrive; when the timer fires, the request's
// context is cancelled, which unblocks the pending Read.
type stallBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration
	timer  *time.Timer
	once   sync.Once
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && errors.Is(context.Cause(b.ctx), ErrStalled) {
		err = fmt.Errorf("%w: no bytes for %s", ErrStalled, b.idle)
	}
	return n, err
}

func (b *stallBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.timer.Stop()
		b.cancel(nil)
	})
	return err
}
