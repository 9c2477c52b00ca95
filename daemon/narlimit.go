package daemon

import (
	"net/http"
	"sync/atomic"
)

// narLimiter caps the NAR responses running at once. Each one holds a window of
// chunks in memory and protects its NAR's chunks from eviction until its last byte
// is sent, so a local client opening connections without end would otherwise
// take memory and the cache budget with it. Nix itself runs at most
// http-connections (25) transfers, so a cap above that never makes Nix wait.
//
// Requests beyond the cap wait for a slot while their client is there; beyond
// maxWaiting of those, they are turned away at once with 503 and Retry-After:
// an overloaded daemon is not a missing NAR, and Nix retries 5xx answers.
type narLimiter struct {
	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
}

func newNARLimiter(running, waiting int) *narLimiter {
	return &narLimiter{slots: make(chan struct{}, running), maxWaiting: int64(waiting)}
}

// serve runs next once a slot is free.
func (l *narLimiter) serve(w http.ResponseWriter, r *http.Request, next func(http.ResponseWriter, *http.Request)) {
	select {
	case l.slots <- struct{}{}:
	default:
		if l.waiting.Add(1) > l.maxWaiting {
			l.waiting.Add(-1)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many NAR requests at once", http.StatusServiceUnavailable)
			return
		}
		select {
		case l.slots <- struct{}{}:
			l.waiting.Add(-1)
		case <-r.Context().Done():
			l.waiting.Add(-1)
			return
		}
	}
	defer func() { <-l.slots }()
	next(w, r)
}

// running and queued are read for status and metrics.
func (l *narLimiter) running() int { return len(l.slots) }
func (l *narLimiter) queued() int  { return int(l.waiting.Load()) }
