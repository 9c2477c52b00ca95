package fetch_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// packedFixture is an upgrade pair published into a packed store, served over HTTP by
// a server that counts the requests for packs.
type packedFixture struct {
	cache        *cachetest.Cache
	dir          string
	st           *chunkstore.Store
	older, newer []byte
	niOld, niNew *nixcache.NarInfo
	codec        *chunk.Codec

	mu           sync.Mutex
	packRequests int
	packBytes    int64 // pack bytes served
}

func newPackedFixture(t *testing.T, size int) *packedFixture {
	t.Helper()
	return newPackedFixtureWith(t, size, publish.Options{})
}

// newPackedFixtureWith publishes with opts on top of the fixture's (packed, deltas).
func newPackedFixtureWith(t *testing.T, size int, opts publish.Options) *packedFixture {
	t.Helper()
	f := &packedFixture{cache: cachetest.New(t, "test-1"), dir: t.TempDir()}
	f.older, f.newer = upgradePair(size)
	f.niOld = f.cache.Add(t, cachetest.HashPart("old"), "demo-1.0", f.older, "zstd")
	f.niNew = f.cache.Add(t, cachetest.HashPart("new"), "demo-1.1", f.newer, "zstd")
	src, err := blob.Open(f.cache.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := chunkstore.Open(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := nixcache.ParseKeyring([]string{f.cache.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	opts.Params, opts.Jobs, opts.Deltas, opts.Layout = chunk.DefaultParams(), 2, true, chunkstore.FormatPacked
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Run(context.Background(), []string{f.niOld.HashPart(), f.niNew.HashPart()}); err != nil {
		t.Fatalf("publishing: %v", err)
	}
	files := http.FileServer(http.Dir(f.dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/"+chunkstore.PackPrefix) {
			files.ServeHTTP(w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		files.ServeHTTP(cw, r)
		f.mu.Lock()
		f.packRequests++
		f.packBytes += cw.n
		f.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	if f.st, err = chunkstore.Open(srv.URL, srv.Client()); err != nil {
		t.Fatal(err)
	}
	if f.codec, err = chunk.NewCodec(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.codec.Close)
	return f
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (f *packedFixture) served() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.packBytes
}

func (f *packedFixture) packs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.packRequests
}

// source returns a store source over the fixture's HTTP store, closed with the test.
func (f *packedFixture) source(t *testing.T) *fetch.StoreSource {
	src := &fetch.StoreSource{Store: f.st}
	t.Cleanup(src.Close)
	return src
}

// TestPackedStoreFetch fetches a NAR out of a packed store cold and as an upgrade, and
// checks the bytes, the few ranged requests and the deltas.
func TestPackedStoreFetch(t *testing.T) {
	f := newPackedFixture(t, 4<<20)
	ctx := context.Background()
	local, err := chunkstore.Open(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	mNew, _, err := local.Manifest(ctx, f.niNew.NarHash)
	if err != nil || !mNew.Packed() {
		t.Fatalf("the published manifest: packed %v, %v", mNew != nil && mNew.Packed(), err)
	}
	tests := []struct {
		name      string
		withBase  bool
		wantDelta bool
	}{
		{name: "cold", withBase: false},
		{name: "upgrade", withBase: true, wantDelta: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCounters()
			fe := fetcherOver(t, f.codec, c, f.source(t))
			if tc.withBase {
				if _, err := wait(fe, fetch.Request{Info: f.niOld, KnownPackage: true}); err != nil {
					t.Fatalf("fetching the older release: %v", err)
				}
			}
			before := f.packs()
			chunkBytes := c.get(c.bytes, "store")
			got, err := wait(fe, fetch.Request{Info: f.niNew, KnownPackage: true})
			if err != nil {
				t.Fatalf("fetching: %v", err)
			}
			if out := readBack(t, fe, got); !bytes.Equal(out, f.newer) {
				t.Fatal("the NAR read back differs")
			}
			n := f.packs() - before
			// The new release's objects lie together in one pack: a few ranged
			// requests, however many chunks.
			if n == 0 || n > 4 || n*10 > len(mNew.Entries) {
				t.Errorf("%d pack requests for %d chunks; want 1 to 4", n, len(mNew.Entries))
			}
			deltaBytes := c.get(c.bytes, "store"+fetch.DeltaSuffix)
			if (deltaBytes > 0) != tc.wantDelta {
				t.Errorf("delta bytes %d; want some: %v", deltaBytes, tc.wantDelta)
			}
			if failed := c.get(c.events, fetch.EventDeltaFailed); failed != 0 {
				t.Errorf("%d deltas failed", failed)
			}
			t.Logf("%d chunks in %d requests; %d bytes of chunks, %d of deltas, %d read through", len(mNew.Entries), n,
				c.get(c.bytes, "store")-chunkBytes, deltaBytes, c.get(c.bytes, "store"+fetch.OverreadSuffix))
		})
	}
}

// TestPackedStoreMissingPack: a manifest that points into a pack that is gone (a
// repack deleted it) costs the chunks, never a wrong byte: the whole NAR follows.
func TestPackedStoreMissingPack(t *testing.T) {
	f := newPackedFixture(t, 2<<20)
	packs, err := filepath.Glob(filepath.Join(f.dir, chunkstore.PackPrefix, "*", "*.pack"))
	if err != nil || len(packs) == 0 {
		t.Fatalf("no packs found (%v)", err)
	}
	for _, p := range packs {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	c := newCounters()
	fe := fetcherOver(t, f.codec, c, f.source(t))
	up, err := blob.Open(f.cache.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	upstream := nixcache.NewBinaryCache(up)
	fe.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{upstream}}
	got, err := wait(fe, fetch.Request{Info: f.niNew, From: upstream.String(), KnownPackage: true})
	f.wantWholeNewer(t, fe, c, got, err)
}

// wantWholeNewer checks that a fetch of the newer release succeeded with the right
// bytes, all of them from the upstream's whole NAR.
func (f *packedFixture) wantWholeNewer(t *testing.T, fe *fetch.Fetcher, c *counters, got *manifest.Manifest, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("fetching: %v", err)
	}
	if out := readBack(t, fe, got); !bytes.Equal(out, f.newer) {
		t.Fatal("the NAR read back differs")
	}
	if c.get(c.bytes, "upstream") == 0 {
		t.Error("the NAR did not come whole from the upstream")
	}
}

// TestPackedStoreCorruptPack: pack objects that do not decode to their IDs, full
// chunks and deltas alike, are caught by the fetcher's own check (the pack reader hands
// them over unopened) and cost the chunks, never a wrong byte. An upgrade then takes
// the whole NAR from the upstream; a cold fetch with no upstream fails.
func TestPackedStoreCorruptPack(t *testing.T) {
	for _, upgrade := range []bool{false, true} {
		name := map[bool]string{false: "cold, no upstream", true: "upgrade"}[upgrade]
		t.Run(name, func(t *testing.T) {
			f := newPackedFixture(t, 2<<20)
			c := newCounters()
			fe := fetcherOver(t, f.codec, c, f.source(t))
			if upgrade {
				if _, err := wait(fe, fetch.Request{Info: f.niOld, KnownPackage: true}); err != nil {
					t.Fatalf("fetching the older release: %v", err)
				}
			}
			packs, err := filepath.Glob(filepath.Join(f.dir, chunkstore.PackPrefix, "*", "*.pack"))
			if err != nil || len(packs) == 0 {
				t.Fatalf("no packs found (%v)", err)
			}
			for _, p := range packs {
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				for i := 64; i < len(data); i += 512 {
					data[i] ^= 0x5a
				}
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			req := fetch.Request{Info: f.niNew, KnownPackage: true}
			if upgrade {
				up, err := blob.Open(f.cache.Dir, nil)
				if err != nil {
					t.Fatal(err)
				}
				upstream := nixcache.NewBinaryCache(up)
				fe.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{upstream}}
				req.From = upstream.String()
			}
			storeBytes := c.get(c.bytes, "store") + c.get(c.bytes, "store"+fetch.DeltaSuffix)
			got, err := wait(fe, req)
			if storeBytes == c.get(c.bytes, "store")+c.get(c.bytes, "store"+fetch.DeltaSuffix) {
				t.Error("nothing was read from the store")
			}
			if !upgrade {
				if err == nil {
					t.Fatal("a cold fetch out of corrupt packs and no upstream succeeded")
				}
				return
			}
			f.wantWholeNewer(t, fe, c, got, err)
			if c.get(c.events, fetch.EventDeltaFailed) == 0 {
				t.Error("no delta failed its check")
			}
		})
	}
}

// TestDeltaPrimaryStoreFetch fetches the newer release out of a delta-primary store,
// where its new chunks are kept only as deltas against the older release's: as an
// upgrade (deltas against the local older release), cold with no upstream (rebuilt
// through the chain, the bytes counted as read), and cold with an upstream whose whole
// NAR is cheaper than the chain (taken whole).
func TestDeltaPrimaryStoreFetch(t *testing.T) {
	f := newPackedFixtureWith(t, 4<<20, publish.Options{DeltaPrimary: true})
	ctx := context.Background()
	local, err := chunkstore.Open(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	mNew, _, err := local.Manifest(ctx, f.niNew.NarHash)
	if err != nil || !mNew.Chained() {
		t.Fatalf("the newer release's manifest: chained %v, %v", mNew != nil && mNew.Chained(), err)
	}
	tests := []struct {
		name      string
		withBase  bool
		upstream  bool
		wantDelta bool
		wantWhole bool
	}{
		{name: "upgrade", withBase: true, wantDelta: true},
		{name: "cold", withBase: false},
		{name: "cold, upstream cheaper", upstream: true, wantWhole: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCounters()
			fe := fetcherOver(t, f.codec, c, f.source(t))
			if tc.upstream {
				up, err := blob.Open(f.cache.Dir, nil)
				if err != nil {
					t.Fatal(err)
				}
				fe.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{nixcache.NewBinaryCache(up)}}
			}
			if tc.withBase {
				if _, err := wait(fe, fetch.Request{Info: f.niOld, KnownPackage: true}); err != nil {
					t.Fatalf("fetching the older release: %v", err)
				}
			}
			before, counted := f.served(), storeBytes(c)
			req := fetch.Request{Info: f.niNew, KnownPackage: true}
			if tc.upstream {
				req.From = fe.Upstream.Caches[0].String()
			}
			got, err := wait(fe, req)
			if err != nil {
				t.Fatalf("fetching: %v", err)
			}
			if out := readBack(t, fe, got); !bytes.Equal(out, f.newer) {
				t.Fatal("the NAR read back differs")
			}
			if whole := c.get(c.bytes, "upstream") > 0; whole != tc.wantWhole {
				t.Fatalf("whole NAR from the upstream: %v, want %v", whole, tc.wantWhole)
			}
			c.mu.Lock()
			priced := c.priced
			c.mu.Unlock()
			if tc.wantWhole {
				// The chain is the older release's chunks and the deltas: more
				// than the newer release's whole zstd NAR.
				if !priced.Whole || priced.DownloadBytes <= priced.WholeBytes {
					t.Fatalf("priced %+v: want the chain dearer than the whole NAR", priced)
				}
				return
			}
			if !tc.withBase && priced.DownloadBytes < int64(f.niNew.FileSize)*9/10 {
				t.Errorf("priced %+v: a cold client's chain costs at least about the NAR", priced)
			}
			if (c.get(c.bytes, "store"+fetch.DeltaSuffix) > 0) != tc.wantDelta {
				t.Errorf("delta bytes %d; want some: %v", c.get(c.bytes, "store"+fetch.DeltaSuffix), tc.wantDelta)
			}
			// What the fetcher says it read is what the packs served for this NAR.
			served, said := f.served()-before, storeBytes(c)-counted
			if said > served || said*10 < served*9 {
				t.Errorf("counted %d bytes from the store, the packs served %d", said, served)
			}
		})
	}
}

// storeBytes adds up the fetcher's byte counts from the chunk store, manifests aside.
func storeBytes(c *counters) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for k, v := range c.bytes {
		if strings.HasPrefix(k, "store") && !strings.HasSuffix(k, "-manifest") {
			n += v
		}
	}
	return n
}

// TestCloseStopsJobs: a job outlives the response that started it (a streamed response
// whose client went away), so Close must end the jobs still running and wait for them
// before their codecs and cache go, here while a pack read hangs.
func TestCloseStopsJobs(t *testing.T) {
	f := newPackedFixture(t, 2<<20)
	asked, release := make(chan struct{}, 1), make(chan struct{})
	files := http.FileServer(http.Dir(f.dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/"+chunkstore.PackPrefix) {
			select {
			case asked <- struct{}{}:
			default:
			}
			// Hangs until the reader gives up (or the test ends, should Close not
			// have made it).
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	st, err := chunkstore.Open(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	src := &fetch.StoreSource{Store: st}
	t.Cleanup(src.Close)
	fe := fetcherOver(t, f.codec, newCounters(), src)
	p, err := fe.Start(fetch.Request{Info: f.niNew, KnownPackage: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	<-asked
	closed := make(chan struct{})
	go func() {
		fe.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return while a job was reading a pack")
	}
	if done, _, err := p.Done(); !done || err == nil {
		t.Fatalf("after Close the job is done: %v, with error %v; want done with an error", done, err)
	}
}
