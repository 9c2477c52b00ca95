package daemon

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/localcache"
)

// TestNarInfoAnswerFollowsTheCache: a narinfo hit answers from what was checked and
// rendered before only while the local cache holds the very bytes it came from. Once
// the record is replaced (by a negative answer, by bytes whose signature fails, by
// another source's copy) or has expired, the daemon reads, checks or looks it up
// again, and never answers with the old body.
func TestNarInfoAnswerFollowsTheCache(t *testing.T) {
	c := cachetest.New(t, "answers-1")
	ni := c.Add(t, cachetest.HashPart("answers"), "answers-1.0", []byte("a small NAR"), "none")
	hashPart := ni.HashPart()
	d, err := New(Config{Upstreams: []string{c.Dir}, TrustedKeys: []string{c.PublicKey},
		StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h := d.Handler()
	get := func(t *testing.T) (int, []byte) {
		t.Helper()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/"+hashPart+".narinfo", nil))
		body, _ := io.ReadAll(w.Result().Body)
		return w.Code, body
	}
	// Served once from the upstream; the answer is written to the cache in the
	// background.
	code, want := get(t)
	if code != http.StatusOK {
		t.Fatalf("first GET: %d", code)
	}
	var cached *localcache.NarInfoEntry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if cached, err = d.cache.GetNarInfo(hashPart, time.Now()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the narinfo never reached the cache: %v", err)
		}
	}
	// Again, from the cache, which checks and renders it.
	if code, got := get(t); code != http.StatusOK || !bytes.Equal(got, want) {
		t.Fatalf("cached GET: %d %q", code, got)
	}
	// From here the upstream has nothing: whatever the daemon answers comes from its cache.
	if err := os.Remove(filepath.Join(c.Dir, hashPart+".narinfo")); err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Replace(cached.Raw, []byte("NarSize: "), []byte("NarSize: 1"), 1)
	tests := []struct {
		name  string
		entry localcache.NarInfoEntry
		want  int
	}{
		{"unchanged", *cached, http.StatusOK},
		{"replaced by a negative answer", localcache.NarInfoEntry{Negative: true, Reason: "gone", Expires: time.Now().Add(time.Hour)}, http.StatusNotFound},
		{"restored", *cached, http.StatusOK},
		{"bytes whose signature fails", localcache.NarInfoEntry{Raw: tampered, Source: cached.Source, Expires: cached.Expires}, http.StatusNotFound},
		{"restored again", *cached, http.StatusOK},
		{"expired", localcache.NarInfoEntry{Raw: cached.Raw, Source: cached.Source, Expires: time.Now().Add(-time.Second)}, http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := d.cache.PutNarInfo(hashPart, tc.entry); err != nil {
				t.Fatal(err)
			}
			code, got := get(t)
			if code != tc.want {
				t.Fatalf("GET = %d, want %d", code, tc.want)
			}
			if code == http.StatusOK && !bytes.Equal(got, want) {
				t.Fatalf("GET answered %q, want %q", got, want)
			}
		})
	}
}
