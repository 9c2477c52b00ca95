package origin_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/origin"
	"github.com/shoal-nix/shoal/publish"
	"github.com/ulikunitz/xz"
)

var smallParams = chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}

// fixture is a signed cache, its published store and a server on it.
type fixture struct {
	cache *cachetest.Cache
	store string
	nars  map[string][]byte // URL -> NAR
	infos map[string]*nixcache.NarInfo
}

func newFixture(t *testing.T, compressions ...string) *fixture {
	t.Helper()
	return newLayoutFixture(t, 0, compressions...)
}

// newLayoutFixture publishes to a store of the given layout (0: the default).
func newLayoutFixture(t *testing.T, layout int, compressions ...string) *fixture {
	t.Helper()
	f := &fixture{cache: cachetest.New(t, "test-1"), store: t.TempDir(), nars: map[string][]byte{}, infos: map[string]*nixcache.NarInfo{}}
	var hps []string
	for i, c := range compressions {
		// Sizes across xz piece boundaries, chunks shared between NARs.
		nar := append(testkit.RandomBytes(7, 90<<10), testkit.RandomBytes(uint64(i+10), 40<<10+i*977)...)
		ni := f.cache.Add(t, cachetest.HashPart(fmt.Sprint("p", i)), fmt.Sprintf("pkg-%d", i), nar, c)
		f.nars[ni.URL], f.infos[ni.URL] = nar, ni
		hps = append(hps, ni.HashPart())
	}
	src, _ := blob.Open(f.cache.Dir, nil)
	dst, _ := chunkstore.Open(f.store, nil)
	kr, _ := nixcache.ParseKeyring([]string{f.cache.PublicKey})
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: smallParams, Jobs: 2, Layout: layout, PackSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Run(context.Background(), hps); err != nil {
		t.Fatal(err)
	}
	return f
}

// httpStore serves the fixture's store directory with net/http's file server, which
// honours Range, as nginx or a CDN would.
func (f *fixture) httpStore(t *testing.T) blob.Backend {
	t.Helper()
	hs := httptest.NewServer(http.FileServer(http.Dir(f.store)))
	t.Cleanup(hs.Close)
	b, err := blob.Open(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) server(t *testing.T, b blob.Backend, opts origin.Options) (*origin.Server, *httptest.Server) {
	t.Helper()
	if b == nil {
		var err error
		if b, err = blob.Open(f.store, nil); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Keys == nil {
		opts.Keys, _ = nixcache.ParseKeyring([]string{f.cache.PublicKey})
	}
	s, err := origin.New(chunkstore.New(b), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return s, hs
}

func get(t *testing.T, method, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, body
}

func decompress(t *testing.T, compression string, body []byte) []byte {
	t.Helper()
	switch compression {
	case "none":
		return body
	case "zstd":
		d, _ := zstd.NewReader(nil)
		defer d.Close()
		out, err := d.DecodeAll(body, nil)
		if err != nil {
			t.Fatalf("zstd: %v", err)
		}
		return out
	case "xz":
		r, err := xz.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("xz: %v", err)
		}
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("xz: %v", err)
		}
		return out
	}
	t.Fatalf("compression %q", compression)
	return nil
}

func TestServeEncodingsRangeHead(t *testing.T) {
	for _, layout := range []struct {
		name   string
		layout int
		http   bool
	}{{"v1", chunkstore.FormatVersion, false}, {"v3", chunkstore.FormatPacked, false}, {"v3 over HTTP", chunkstore.FormatPacked, true}} {
		t.Run(layout.name, func(t *testing.T) {
			f := newLayoutFixture(t, layout.layout, "none", "zstd", "xz")
			var b blob.Backend
			if layout.http {
				b = f.httpStore(t)
			}
			testEncodingsRangeHead(t, f, b)
		})
	}
}

// TestServeDeltaPrimary: every route of a delta-primary store's NARs, whose chunks are
// mostly rebuilt from chains, answers GET, HEAD and ranges as for full chunks, over a
// directory and over HTTP.
func TestServeDeltaPrimary(t *testing.T) {
	for _, viaHTTP := range []bool{false, true} {
		t.Run(fmt.Sprint("http=", viaHTTP), func(t *testing.T) {
			f := &fixture{cache: cachetest.New(t, "test-1"), store: t.TempDir(), nars: map[string][]byte{}, infos: map[string]*nixcache.NarInfo{}}
			// Three releases of one package, each a few edits away from the one before,
			// each in another compression.
			nar := testkit.RandomBytes(3, 200<<10)
			var hps []string
			for i, c := range []string{"xz", "none", "zstd"} {
				nar = bytes.Clone(nar)
				for j := 500 + i; j < len(nar); j += 5000 {
					nar[j]++
				}
				ni := f.cache.Add(t, cachetest.HashPart(fmt.Sprint("v", i)), fmt.Sprintf("pkg-1.%d", i), nar, c)
				f.nars[ni.URL], f.infos[ni.URL] = nar, ni
				hps = append(hps, ni.HashPart())
			}
			src, _ := blob.Open(f.cache.Dir, nil)
			dst, _ := chunkstore.Open(f.store, nil)
			kr, _ := nixcache.ParseKeyring([]string{f.cache.PublicKey})
			p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: smallParams, Jobs: 2,
				Deltas: true, Layout: chunkstore.FormatPacked, DeltaPrimary: true, PackSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			sum, err := p.Run(context.Background(), hps)
			if err != nil || sum.DeltaOnly == 0 || sum.InBase == 0 {
				t.Fatalf("publish: %+v, %v; want entries kept as deltas only and in the base", sum, err)
			}
			var b blob.Backend
			if viaHTTP {
				b = f.httpStore(t)
			}
			testEncodingsRangeHead(t, f, b)
		})
	}
}

func testEncodingsRangeHead(t *testing.T, f *fixture, b blob.Backend) {
	_, hs := f.server(t, b, origin.Options{})
	for url, nar := range f.nars {
		ni := f.infos[url]
		t.Run(ni.Compression, func(t *testing.T) {
			resp, body := get(t, "GET", hs.URL+"/"+url)
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s: %s %s", url, resp.Status, body)
			}
			if got := decompress(t, ni.Compression, body); !bytes.Equal(got, nar) {
				t.Fatalf("GET %s: decompresses to %d bytes, not the NAR's %d", url, len(got), len(nar))
			}
			if resp.ContentLength != int64(len(body)) {
				t.Errorf("Content-Length %d, body %d", resp.ContentLength, len(body))
			}
			if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
				t.Errorf("Cache-Control %q", cc)
			}
			etag := resp.Header.Get("ETag")
			if etag == "" {
				t.Error("no ETag")
			}
			// Deterministic: a second GET gives the same bytes, so ranges can resume.
			if _, again := get(t, "GET", hs.URL+"/"+url); !bytes.Equal(again, body) {
				t.Fatal("second GET differs from the first")
			}
			head, hb := get(t, "HEAD", hs.URL+"/"+url)
			if head.StatusCode != 200 || len(hb) != 0 || head.ContentLength != int64(len(body)) {
				t.Errorf("HEAD: %s, %d body bytes, Content-Length %d", head.Status, len(hb), head.ContentLength)
			}
			n := int64(len(body))
			for _, r := range [][2]int64{{0, 0}, {1, 100}, {24, 24 + 70000}, {n / 3, n / 2}, {n - 5, n - 1}, {n - 40, n - 1}} {
				resp, part := get(t, "GET", hs.URL+"/"+url, "Range", fmt.Sprintf("bytes=%d-%d", r[0], r[1]))
				if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, body[r[0]:r[1]+1]) {
					t.Fatalf("Range %v: %s, %d bytes, equal %t", r, resp.Status, len(part), bytes.Equal(part, body[r[0]:r[1]+1]))
				}
			}
			// Several ranges: a multipart answer whose parts are the same bytes.
			resp, multi := get(t, "GET", hs.URL+"/"+url, "Range", fmt.Sprintf("bytes=0-9,%d-%d", n/2, n/2+99))
			if resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") ||
				!bytes.Contains(multi, body[:10]) || !bytes.Contains(multi, body[n/2:n/2+100]) {
				t.Fatalf("multiple ranges: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
			}
			resp, part := get(t, "GET", hs.URL+"/"+url, "Range", "bytes=1000-", "If-Range", etag)
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, body[1000:]) {
				t.Fatalf("open Range with If-Range: %s", resp.Status)
			}
			if resp, _ := get(t, "GET", hs.URL+"/"+url, "If-None-Match", etag); resp.StatusCode != http.StatusNotModified {
				t.Errorf("If-None-Match: %s", resp.Status)
			}
		})
	}
}

func TestServeMisses(t *testing.T) {
	f := newFixture(t, "zstd")
	var url string
	for u := range f.nars {
		url = u
	}
	_, hs := f.server(t, nil, origin.Options{})
	for _, path := range []string{"/nar/0000000000000000000000000000000000000000000000000000.nar.zst", "/nix-cache-info", "/nar/../x", "/"} {
		resp, _ := get(t, "GET", hs.URL+path)
		if resp.StatusCode != 404 || resp.Header.Get("Cache-Control") != "public, max-age=60" {
			t.Errorf("GET %s: %s, Cache-Control %q", path, resp.Status, resp.Header.Get("Cache-Control"))
		}
	}
	if resp, _ := get(t, "POST", hs.URL+"/"+url); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", resp.Status)
	}
	// Signed by a key the server does not trust: as good as absent.
	other := cachetest.New(t, "other-1")
	kr, _ := nixcache.ParseKeyring([]string{other.PublicKey})
	_, hs2 := f.server(t, nil, origin.Options{Keys: kr})
	if resp, body := get(t, "GET", hs2.URL+"/"+url); resp.StatusCode != 404 {
		t.Errorf("untrusted narinfo: %s %s", resp.Status, body)
	}
}

// A store that lost or garbled a chunk must never produce a 200: the NAR is checked
// before its first byte.
func TestServeBrokenStore(t *testing.T) {
	for _, tc := range []struct {
		damage string
		layout int
	}{{"corrupt", 0}, {"missing", 0}, {"corrupt", chunkstore.FormatPacked}, {"missing", chunkstore.FormatPacked}} {
		damage := tc.damage
		t.Run(fmt.Sprintf("%s/layout %d", damage, tc.layout), func(t *testing.T) {
			f := newLayoutFixture(t, tc.layout, "zstd", "xz")
			dir := "chunks"
			if tc.layout == chunkstore.FormatPacked {
				dir = "packs"
			}
			var chunks []string
			filepath.WalkDir(filepath.Join(f.store, dir), func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() && !strings.HasSuffix(p, ".idx") {
					chunks = append(chunks, p)
				}
				return nil
			})
			if len(chunks) == 0 {
				t.Fatal("nothing to damage")
			}
			for _, c := range chunks {
				if damage == "missing" {
					os.Remove(c)
					continue
				}
				// Another valid frame of the same length: decodes, but not to the ID.
				obj, _ := os.ReadFile(c)
				if len(obj) > 100 {
					obj[len(obj)-10] ^= 0xff
				}
				os.WriteFile(c, obj, 0o644)
			}
			s, hs := f.server(t, nil, origin.Options{})
			for url := range f.nars {
				resp, body := get(t, "GET", hs.URL+"/"+url)
				if resp.StatusCode != http.StatusBadGateway {
					t.Errorf("GET %s from a store with %s chunks: %s %.200s", url, damage, resp.Status, body)
				}
			}
			// Asked again at once, the failure is remembered, not re-verified.
			for url := range f.nars {
				if resp, _ := get(t, "GET", hs.URL+"/"+url); resp.StatusCode != http.StatusBadGateway {
					t.Errorf("GET %s again: %s", url, resp.Status)
				}
			}
			if _, failed := s.Metrics().Verifications(); failed != int64(len(f.nars)) {
				t.Errorf("%d verify failures counted, want %d", failed, len(f.nars))
			}
			var m bytes.Buffer
			s.Metrics().WriteTo(&m)
			if !strings.Contains(m.String(), fmt.Sprintf("shoal_serve_nar_verify_failures_total %d", len(f.nars))) {
				t.Errorf("metrics:\n%s", m.String())
			}
		})
	}
}

// gated holds reads of the NAR URL index until released, counting them.
type gated struct {
	blob.Backend
	waiting atomic.Int64
	release chan struct{}
	chunks  atomic.Int64
}

func (g *gated) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasPrefix(key, chunkstore.NarURLPrefix) {
		g.waiting.Add(1)
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if strings.HasPrefix(key, chunkstore.ChunkPrefix) {
		g.chunks.Add(1)
	}
	return g.Backend.Open(ctx, key)
}

func metric(t *testing.T, url, name string) string {
	resp, body := get(t, "GET", url+"/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %s", resp.Status)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// Concurrent first requests for one NAR share one resolution and verification.
func TestServeConcurrentFirstRequestsWorkOnce(t *testing.T) {
	f := newFixture(t, "zstd")
	var url string
	for u := range f.nars {
		url = u
	}
	b, _ := blob.Open(f.store, nil)
	g := &gated{Backend: b, release: make(chan struct{})}
	s, hs := f.server(t, g, origin.Options{})
	const clients = 16
	var wg sync.WaitGroup
	results := make(chan []byte, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := get(t, "GET", hs.URL+"/"+url)
			if resp.StatusCode != 200 {
				t.Errorf("%s", resp.Status)
			}
			results <- body
		}()
	}
	// Every client holds a slot (it is in the handler) and the one resolution is
	// blocked on the index: nobody can have finished before the others arrived.
	for metric(t, hs.URL, "shoal_serve_active_requests") != fmt.Sprint(clients) || g.waiting.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	wg.Wait()
	close(results)
	want := decompress(t, "zstd", <-results)
	for body := range results {
		if !bytes.Equal(decompress(t, "zstd", body), want) {
			t.Fatal("clients got different NARs")
		}
	}
	if total, failed := s.Metrics().Verifications(); total != 1 || failed != 0 {
		t.Errorf("%d verifications (%d failed) for %d concurrent first requests, want 1", total, failed, clients)
	}
	if w := g.waiting.Load(); w != 1 {
		t.Errorf("the index was read %d times, want once", w)
	}
}

// With every slot taken, a request waits its queue timeout and then gets a 503, not a
// hang and not a 404.
func TestServeQueueBound(t *testing.T) {
	f := newFixture(t, "zstd")
	var url string
	for u := range f.nars {
		url = u
	}
	b, _ := blob.Open(f.store, nil)
	g := &gated{Backend: b, release: make(chan struct{})}
	_, hs := f.server(t, g, origin.Options{MaxActive: 1, QueueTimeout: 20 * time.Millisecond})
	done := make(chan int)
	go func() {
		resp, _ := get(t, "GET", hs.URL+"/"+url)
		done <- resp.StatusCode
	}()
	for g.waiting.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	resp, _ := get(t, "GET", hs.URL+"/"+url)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("queued request: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
	close(g.release)
	if code := <-done; code != 200 {
		t.Errorf("first request: %d", code)
	}
}

// failing is a store whose backend is unreachable.
type failing struct{ blob.Backend }

func (failing) Open(context.Context, string) (io.ReadCloser, error) {
	return nil, fmt.Errorf("dial tcp 192.0.2.1:443: connection refused")
}

func TestServeStoreUnreachable(t *testing.T) {
	f := newFixture(t, "zstd")
	b, _ := blob.Open(f.store, nil)
	_, ok := f.server(t, b, origin.Options{})
	if resp, body := get(t, "GET", ok.URL+"/healthz"); resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("healthz with a reachable store: %s %q", resp.Status, body)
	}
	_, hs := f.server(t, failing{b}, origin.Options{})
	if resp, _ := get(t, "GET", hs.URL+"/healthz"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("healthz with an unreachable store: %s", resp.Status)
	}
	for url := range f.nars {
		if resp, _ := get(t, "GET", hs.URL+"/"+url); resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("unreachable store: %s, Cache-Control %q", resp.Status, resp.Header.Get("Cache-Control"))
		}
	}
}

// A chunk lost after its NAR was verified: the next response has started (200 and
// Content-Length are out) when the loss shows, so the server cuts the connection and
// the client sees a short body, never a whole wrong one.
func TestServeChunkLostAfterVerification(t *testing.T) {
	f := newFixture(t, "zstd")
	var url string
	for u := range f.nars {
		url = u
	}
	_, hs := f.server(t, nil, origin.Options{ChunkCacheBytes: -1})
	if resp, _ := get(t, "GET", hs.URL+"/"+url); resp.StatusCode != 200 {
		t.Fatalf("first GET: %s", resp.Status)
	}
	// The NAR's last chunk: everything before it is sent first.
	st, _ := chunkstore.Open(f.store, nil)
	m, _, err := st.Manifest(context.Background(), f.infos[url].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(f.store, filepath.FromSlash(chunkstore.ChunkKey(m.Entries[len(m.Entries)-1].ID)))); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(hs.URL + "/" + url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("a NAR missing chunks arrived whole: %s, %d of %d bytes", resp.Status, len(body), resp.ContentLength)
	}
	if int64(len(body)) >= resp.ContentLength {
		t.Fatalf("%d bytes of %d", len(body), resp.ContentLength)
	}
}

// TestServePackedCoalesces: a NAR of a packed store is read from the store with a few
// ranged requests, not one per chunk, and then served from memory.
func TestServePackedCoalesces(t *testing.T) {
	f := newLayoutFixture(t, chunkstore.FormatPacked, "zstd", "none")
	var requests atomic.Int64
	files := http.FileServer(http.Dir(f.store))
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/packs/") {
			requests.Add(1)
		}
		files.ServeHTTP(w, r)
	}))
	defer hs.Close()
	b, err := blob.Open(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	_, srv := f.server(t, b, origin.Options{})
	st := chunkstore.New(b)
	for url, nar := range f.nars {
		ni := f.infos[url]
		m, _, err := st.Manifest(context.Background(), ni.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		requests.Store(0)
		resp, body := get(t, "GET", srv.URL+"/"+url)
		if resp.StatusCode != 200 || !bytes.Equal(decompress(t, ni.Compression, body), nar) {
			t.Fatalf("GET %s: %s", url, resp.Status)
		}
		if n := requests.Load(); n == 0 || n > int64(len(m.Packs))+2 || n*4 > int64(len(m.Entries)) {
			t.Errorf("GET %s: %d requests to the store for %d chunks in %d packs", url, n, len(m.Entries), len(m.Packs))
		}
	}
}
