package fetch_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/deltatest"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

// upgradePair is NAR-like data and its next version: the same bytes with a small edit
// every few KiB (as shifted addresses touch a binary) and an insertion in the middle,
// so that almost every chunk of the new version is new, yet close to the old one.
func upgradePair(size int) (older, newer []byte) {
	r := rand.New(rand.NewPCG(7, 9))
	words := make([][]byte, 512)
	for i := range words {
		w := make([]byte, 3+r.IntN(12))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		words[i] = w
	}
	older = make([]byte, 0, size)
	for len(older) < size {
		if r.IntN(4) == 0 {
			var b [8]byte
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			older = append(older, b[:]...)
		} else {
			older = append(older, words[r.IntN(len(words))]...)
			older = append(older, ' ')
		}
	}
	older = older[:size]
	newer = bytes.Clone(older)
	for i := 100; i < len(newer); i += 3000 + r.IntN(2000) {
		newer[i] ^= byte(1 + r.IntN(255))
	}
	mid := len(newer) / 2
	newer = append(newer[:mid:mid], append([]byte("inserted in the new version"), newer[mid:]...)...)
	return older, newer
}

// publishNAR writes nar's chunks and manifest to st, as `shoal publish` would.
func publishNAR(t testing.TB, st *chunkstore.Store, codec *chunk.Codec, nar []byte) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	m, err := manifest.Build(ctx, bytes.NewReader(nar), chunk.DefaultParams(), func(id chunk.ID, raw []byte) (int, error) {
		obj := codec.Encode(nil, raw)
		return len(obj), st.PutChunk(ctx, id, obj)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutManifest(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// counters records bytes and events as the daemon's metrics do.
type counters struct {
	mu     sync.Mutex
	bytes  map[string]int64
	events map[string]int64
	priced fetch.Pricing // the last NAR's
}

func newCounters() *counters {
	return &counters{bytes: map[string]int64{}, events: map[string]int64{}}
}

func (c *counters) Add(source string, n int64) {
	c.mu.Lock()
	c.bytes[source] += n
	c.mu.Unlock()
}

func (c *counters) Priced(p fetch.Pricing) {
	c.mu.Lock()
	c.priced = p
	c.mu.Unlock()
}

func (c *counters) Event(name string) {
	c.mu.Lock()
	c.events[name]++
	c.mu.Unlock()
}

func (c *counters) get(m map[string]int64, k string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[k]
}

// deltaFixture is a store holding two versions of a NAR, the newer one with deltas
// against the older.
type deltaFixture struct {
	st             *chunkstore.Store
	codec          *chunk.Codec
	older, newer   []byte
	mOld, mNew     *manifest.Manifest // mNew has deltas
	mNewPlain      *manifest.Manifest // as published, without deltas
	deltas         deltatest.Result
	oldIDs, newIDs map[chunk.ID]bool
}

func newDeltaFixture(t testing.TB, size int) *deltaFixture {
	t.Helper()
	st, err := chunkstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(codec.Close)
	f := &deltaFixture{st: st, codec: codec, oldIDs: map[chunk.ID]bool{}, newIDs: map[chunk.ID]bool{}}
	f.older, f.newer = upgradePair(size)
	f.mOld = publishNAR(t, st, codec, f.older)
	f.mNewPlain = publishNAR(t, st, codec, f.newer)
	f.deltas, err = deltatest.AddDeltas(context.Background(), st, f.mOld.NarHash, f.mNewPlain.NarHash, deltatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.mNew = f.deltas.Manifest
	for _, e := range f.mOld.Entries {
		f.oldIDs[e.ID] = true
	}
	for _, e := range f.mNew.Entries {
		f.newIDs[e.ID] = true
	}
	return f
}

// fetcher returns a fetcher over a fresh local cache holding the older version's
// chunks when withBase is set, with the fixture's store as its source.
func (f *deltaFixture) fetcher(t testing.TB, withBase bool, c *counters) *fetch.Fetcher {
	t.Helper()
	return f.fetcherWith(t, withBase, c, &fetch.StoreSource{Store: f.st})
}

func (f *deltaFixture) fetcherWith(t testing.TB, withBase bool, c *counters, sources ...fetch.Source) *fetch.Fetcher {
	t.Helper()
	a := fetcherOver(t, f.codec, c, sources...)
	if withBase {
		f.putChunks(t, a.Cache, f.mOld)
	}
	return a
}

// fetcherOver returns a fetcher over a fresh local cache and the given sources.
func fetcherOver(t testing.TB, codec *chunk.Codec, c *counters, sources ...fetch.Source) *fetch.Fetcher {
	t.Helper()
	cache, err := localcache.Open(filepath.Join(t.TempDir(), "cache.db"), localcache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	a := &fetch.Fetcher{Cache: cache, Codec: codec, Sources: sources, Params: chunk.DefaultParams(), Counters: c}
	t.Cleanup(a.Close)
	return a
}

func (f *deltaFixture) putChunks(t testing.TB, cache *localcache.Cache, m *manifest.Manifest) {
	t.Helper()
	var puts []localcache.ChunkPut
	for _, e := range m.Entries {
		obj, err := f.st.Chunk(context.Background(), e.ID)
		if err != nil {
			t.Fatal(err)
		}
		puts = append(puts, localcache.ChunkPut{ID: e.ID, Obj: obj})
	}
	if err := cache.PutChunks(context.Background(), puts); err != nil {
		t.Fatal(err)
	}
}

// assemble has a make nar available with m as its manifest (kept in the local cache,
// unverified, as a manifest fetched earlier would be), and returns the verified
// manifest.
func assemble(t testing.TB, a *fetch.Fetcher, m *manifest.Manifest, nar []byte) *manifest.Manifest {
	t.Helper()
	raw, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Cache.PutManifest(manifest.Key(m.NarHash), raw); err != nil {
		t.Fatal(err)
	}
	got, err := wait(a, fetch.Request{Info: narInfo(nar), KnownPackage: true})
	if err != nil {
		t.Fatalf("assembling: %v", err)
	}
	return got
}

// narInfo describes nar as a trusted narinfo would.
func narInfo(nar []byte) *nixcache.NarInfo {
	return &nixcache.NarInfo{StorePath: "/nix/store/0m2d5kyb9a2wcw3d0i0b6c2k8xkzq1w5-demo-1.1",
		NarHash: sha256.Sum256(nar), NarSize: uint64(len(nar)), FileSize: uint64(len(nar))}
}

// wait runs one request to the end.
func wait(a *fetch.Fetcher, req fetch.Request) (*manifest.Manifest, error) {
	p, err := a.Start(req)
	if err != nil {
		return nil, err
	}
	defer p.Release()
	return p.Wait(context.Background())
}

// readBack reads the NAR m describes from the fetcher's local cache.
func readBack(t testing.TB, a *fetch.Fetcher, got *manifest.Manifest) []byte {
	t.Helper()
	out, err := io.ReadAll(a.NewReader(context.Background(), got))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rewriteDeltas replaces every delta object the manifest names with what bad returns.
func (f *deltaFixture) rewriteDeltas(t testing.TB, bad func(raw, dict []byte) []byte) {
	t.Helper()
	ctx := context.Background()
	raws := map[chunk.ID][]byte{}
	for _, v := range []struct {
		m   *manifest.Manifest
		nar []byte
	}{{f.mOld, f.older}, {f.mNew, f.newer}} {
		var off uint64
		for _, e := range v.m.Entries {
			raws[e.ID] = v.nar[off : off+uint64(e.Size)]
			off += uint64(e.Size)
		}
	}
	for i := range f.mNew.Entries {
		bases, id, _, ok := f.mNew.DeltaOf(i)
		if !ok {
			continue
		}
		var dict []byte
		for _, b := range bases {
			dict = append(dict, raws[b.ID]...)
		}
		if err := f.st.Backend().Put(ctx, chunkstore.DeltaKey(id), bad(raws[f.mNew.Entries[i].ID], dict)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAssemblerDeltas assembles the newer NAR with and without its base and with broken
// deltas, and checks both the bytes and what went over the wire.
func TestAssemblerDeltas(t *testing.T) {
	f := newDeltaFixture(t, 1<<20)
	var newFull, newFullWithDelta, deltaBytes int64
	newChunks := 0
	seen := map[chunk.ID]bool{}
	for i, e := range f.mNew.Entries {
		if f.oldIDs[e.ID] || seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		newChunks++
		newFull += int64(e.StoredSize)
		if _, _, size, ok := f.mNew.DeltaOf(i); ok {
			newFullWithDelta += int64(e.StoredSize)
			deltaBytes += int64(size)
		}
	}
	if f.deltas.Deltas < newChunks/2 || deltaBytes*4 > newFullWithDelta {
		t.Fatalf("fixture does not exercise deltas: %d of %d new chunks have deltas, %d delta bytes for %d full bytes",
			f.deltas.Deltas, newChunks, deltaBytes, newFullWithDelta)
	}
	t.Logf("%d new chunks, %d bytes as full objects; %d have deltas of %d bytes (full %d)", newChunks, newFull, f.deltas.Deltas, deltaBytes, newFullWithDelta)
	codec := chunk.NewDeltaCodec(0, 1)
	defer codec.Close()

	tests := []struct {
		name      string
		manifest  *manifest.Manifest
		withBase  bool
		breakWith func(raw, dict []byte) []byte
		// want: bytes of deltas and of full chunks fetched, and failed deltas.
		wantDelta, wantFull, wantFailed int64
	}{
		{name: "base in cache", manifest: f.mNew, withBase: true,
			wantDelta: deltaBytes, wantFull: newFull - newFullWithDelta},
		{name: "no base", manifest: f.mNew, withBase: false,
			wantFull: int64(f.mNew.StoredSize()) - dupBytes(f.mNew)},
		{name: "version 1 manifest", manifest: f.mNewPlain, withBase: true, wantFull: newFull},
		{name: "corrupt deltas", manifest: f.mNew, withBase: true,
			breakWith: func(raw, dict []byte) []byte { return []byte("not a zstd frame at all") },
			wantDelta: -1, wantFull: newFull, wantFailed: int64(f.deltas.Deltas)},
		{name: "deltas against other bases", manifest: f.mNew, withBase: true,
			breakWith: func(raw, dict []byte) []byte {
				// The same bytes one position later: every match the encoder finds
				// points one byte off in the real dictionary.
				other := append([]byte{'x'}, dict[:len(dict)-1]...)
				obj, err := codec.EncodeDelta(nil, raw, other)
				if err != nil {
					t.Fatal(err)
				}
				return obj
			},
			wantDelta: -1, wantFull: newFull, wantFailed: int64(f.deltas.Deltas)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.breakWith != nil {
				f.rewriteDeltas(t, tc.breakWith)
				t.Cleanup(func() {
					f.rewriteDeltas(t, func(raw, dict []byte) []byte {
						obj, err := codec.EncodeDelta(nil, raw, dict)
						if err != nil {
							t.Fatal(err)
						}
						return obj
					})
				})
			}
			c := newCounters()
			a := f.fetcher(t, tc.withBase, c)
			got := readBack(t, a, assemble(t, a, tc.manifest, f.newer))
			if !bytes.Equal(got, f.newer) {
				t.Fatalf("assembled NAR differs from the newer version")
			}
			delta, full, failed := c.get(c.bytes, "store"+fetch.DeltaSuffix), c.get(c.bytes, "store"), c.get(c.events, fetch.EventDeltaFailed)
			t.Logf("fetched %d delta bytes, %d full chunk bytes; %d deltas failed", delta, full, failed)
			if tc.wantDelta >= 0 && delta != tc.wantDelta {
				t.Errorf("delta bytes = %d, want %d", delta, tc.wantDelta)
			}
			if tc.wantDelta < 0 && delta == 0 {
				t.Errorf("no delta was fetched")
			}
			if full != tc.wantFull {
				t.Errorf("full chunk bytes = %d, want %d", full, tc.wantFull)
			}
			if failed != tc.wantFailed {
				t.Errorf("failed deltas = %d, want %d", failed, tc.wantFailed)
			}
		})
	}
}

// dupBytes is the stored size of m's entries beyond each chunk's first occurrence.
func dupBytes(m *manifest.Manifest) int64 {
	seen := map[chunk.ID]bool{}
	var n int64
	for _, e := range m.Entries {
		if seen[e.ID] {
			n += int64(e.StoredSize)
		}
		seen[e.ID] = true
	}
	return n
}

// BenchmarkAssembleDeltas assembles the same NAR from deltas against a local base, from
// full chunks, and from the whole uncompressed NAR, in the same run, and reports MB/s of
// NAR for each and the ratios: what decoding deltas (building each dictionary from local
// chunks, decoding, then compressing the result for the local cache) costs against plain
// chunks, and against cutting and compressing a whole NAR, which deltas replace.
func BenchmarkAssembleDeltas(b *testing.B) {
	size := 32 << 20
	if testing.Short() {
		size = 2 << 20
	}
	f := newDeltaFixture(b, size)
	up := cachetest.New(b, "bench-1")
	ni := up.Add(b, cachetest.HashPart("bench"), "demo-1.1", f.newer, "none")
	whole, err := blob.Open(up.Dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	wholeCache := nixcache.NewBinaryCache(whole)
	run := func(m *manifest.Manifest) float64 {
		var total float64
		for range b.N {
			b.StopTimer()
			var a *fetch.Fetcher
			req := fetch.Request{Info: ni, KnownPackage: true}
			if m != nil {
				a = f.fetcher(b, true, newCounters())
				raw, err := m.MarshalBinary()
				if err != nil {
					b.Fatal(err)
				}
				if err := a.Cache.PutManifest(manifest.Key(m.NarHash), raw); err != nil {
					b.Fatal(err)
				}
			} else {
				// No manifest anywhere: the whole NAR from the upstream.
				a = f.fetcherWith(b, true, newCounters())
				a.Upstream = fetch.Upstream{Caches: []*nixcache.BinaryCache{wholeCache}}
				req.From = wholeCache.String()
			}
			b.StartTimer()
			start := time.Now()
			if _, err := wait(a, req); err != nil {
				b.Fatal(err)
			}
			total += time.Since(start).Seconds()
		}
		return float64(len(f.newer)) * float64(b.N) / total / 1e6
	}
	plain := run(f.mNewPlain)
	deltas := run(f.mNew)
	wholeNAR := run(nil)
	b.ReportMetric(plain, "plain-MB/s")
	b.ReportMetric(deltas, "delta-MB/s")
	b.ReportMetric(wholeNAR, "whole-MB/s")
	b.ReportMetric(deltas/plain, "delta/plain")
	b.ReportMetric(deltas/wholeNAR, "delta/whole")
	fmt.Printf("assemble %d MiB NAR: plain chunks %.0f MB/s, deltas %.0f MB/s (%d of %d chunks), whole NAR %.0f MB/s; deltas/plain %.2f, deltas/whole %.2f\n",
		len(f.newer)>>20, plain, deltas, f.deltas.Deltas, len(f.mNew.Entries), wholeNAR, deltas/plain, deltas/wholeNAR)
}
