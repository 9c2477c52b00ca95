package fetch_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// FuzzServeRange feeds arbitrary Range headers, as a client resuming a NAR sends them,
// to a verified NAR served from the local cache the way the daemon serves it: the
// answer is the whole NAR, the exact bytes of one range inside it (never empty), a
// multipart answer, or a refusal.
func FuzzServeRange(f *testing.F) {
	for _, h := range []string{"", "bytes=0-", "bytes=100-199", "bytes=-500", "bytes=0-0", "bytes=5-1", "bytes=1-2,3-4",
		"bytes=-0", "bytes=99999999999999999999-", "items=0-1", "bytes=70000-", "bytes=0-99999999"} {
		f.Add(h)
	}
	fe, m, nar := servedNAR(f, 200_000)
	f.Fuzz(func(t *testing.T, h string) {
		r := httptest.NewRequest(http.MethodGet, "/nar/x.nar", nil)
		if h != "" {
			r.Header.Set("Range", h)
		}
		w := httptest.NewRecorder()
		rd := fe.NewReader(context.Background(), m)
		nixcache.ServeNAR(w, r, rd)
		if err := rd.Err(); err != nil {
			t.Fatalf("reading the NAR: %v", err)
		}
		body := w.Body.Bytes()
		switch w.Code {
		case http.StatusOK:
			if !bytes.Equal(body, nar) {
				t.Fatalf("Range %q: 200 with %d bytes, want the whole %d-byte NAR", h, len(body), len(nar))
			}
		case http.StatusPartialContent:
			if strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/") {
				return
			}
			var start, end, size int64
			if _, err := fmt.Sscanf(w.Header().Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &size); err != nil {
				t.Fatalf("Range %q: Content-Range %q: %v", h, w.Header().Get("Content-Range"), err)
			}
			if size != int64(len(nar)) || start < 0 || end < start || end >= size {
				t.Fatalf("Range %q: Content-Range %q outside the NAR", h, w.Header().Get("Content-Range"))
			}
			if !bytes.Equal(body, nar[start:end+1]) {
				t.Fatalf("Range %q: body is not bytes %d-%d of the NAR", h, start, end)
			}
		case http.StatusRequestedRangeNotSatisfiable:
		default:
			t.Fatalf("Range %q: status %d", h, w.Code)
		}
	})
}

// servedNAR puts a NAR of size random bytes into a fresh local cache as a verified
// fetch would leave it, and returns a fetcher over that cache and its manifest.
func servedNAR(t testing.TB, size int) (*fetch.Fetcher, *manifest.Manifest, []byte) {
	t.Helper()
	cache, err := localcache.Open(filepath.Join(t.TempDir(), "cache.db"), localcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(codec.Close)
	nar := testkit.RandomBytes(1, size)
	var puts []localcache.ChunkPut
	m, err := manifest.Build(context.Background(), bytes.NewReader(nar), chunk.Params{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}, func(id chunk.ID, raw []byte) (int, error) {
		obj := codec.Encode(nil, raw)
		puts = append(puts, localcache.ChunkPut{ID: id, Obj: obj})
		return len(obj), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.PutChunks(context.Background(), puts); err != nil {
		t.Fatal(err)
	}
	if len(m.Entries) < 3 {
		t.Fatalf("want a NAR of several chunks, got %d", len(m.Entries))
	}
	fe := &fetch.Fetcher{Cache: cache, Codec: codec}
	got, err := io.ReadAll(fe.NewReader(context.Background(), m))
	if err != nil || !bytes.Equal(got, nar) {
		t.Fatalf("reading the NAR back: %v", err)
	}
	return fe, m, nar
}
