package daemon

import (
	"net/http"
	"time"
)

// cutStalledWriters bounds how long one write of a response may wait for the client
// to take bytes. A NAR response holds a lease on its chunks and a slot among the NAR
// responses until its last byte is out; a client that asks for a NAR and stops
// reading would hold both for as long as it keeps the connection open, and
// http.Server's WriteTimeout can't help, since it bounds whole responses and a
// large NAR over a slow link legitimately takes long. Each write instead gets its own
// deadline: a reader taking nothing for d is cut off.
func cutStalledWriters(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// A deadline left by the previous response on this connection must not cut
		// this one while it works towards its first byte.
		_ = rc.SetWriteDeadline(time.Time{})
		next.ServeHTTP(&stallWriter{ResponseWriter: w, rc: rc, d: d}, r)
	})
}

type stallWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (s *stallWriter) Write(p []byte) (int, error) {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.d))
	return s.ResponseWriter.Write(p)
}

func (s *stallWriter) WriteHeader(code int) {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.d))
	s.ResponseWriter.WriteHeader(code)
}

func (s *stallWriter) Flush() {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.d))
	_ = s.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection beneath.
func (s *stallWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
