package localcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	bolt "go.etcd.io/bbolt"
)

func openTemp(t testing.TB) (*Cache, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	c, err := Open(path, Options{InitialMmapSize: 16 << 20})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

// testChunk makes a distinct, deterministic object; its ID is derived from
// the content, as real IDs are.
func testChunk(seed uint64, size int) ChunkPut {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	obj := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		binary.LittleEndian.PutUint64(obj[i:], rng.Uint64())
	}
	if size > 0 {
		obj[0] = byte(seed)
	}
	return ChunkPut{ID: sha256.Sum256(obj), Obj: obj}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestChunkRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		sizes []int
	}{
		{"one tiny", []int{1}},
		{"one 64KiB", []int{64 << 10}},
		{"mixed", []int{100, 16 << 10, 64 << 10, 256 << 10, 3}},
		{"more than one transaction", func() []int {
			s := make([]int, 600)
			for i := range s {
				s[i] = 512 + i
			}
			return s
		}()},
	}
	for ti, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := openTemp(t)
			ctx := context.Background()
			var puts []ChunkPut
			var total int64
			for i, n := range tt.sizes {
				puts = append(puts, testChunk(uint64(ti*1000+i), n))
				total += int64(n)
			}
			if err := c.PutChunks(ctx, puts); err != nil {
				t.Fatal(err)
			}
			for _, p := range puts {
				got, err := c.GetChunk(ctx, p.ID)
				if err != nil {
					t.Fatalf("GetChunk(%x): %v", p.ID[:4], err)
				}
				if !bytes.Equal(got, p.Obj) {
					t.Fatalf("GetChunk(%x) returned different bytes", p.ID[:4])
				}
			}
			st, err := c.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Chunks != len(puts) || st.ChunkBytes != total {
				t.Fatalf("Stats = %d chunks / %d bytes, want %d / %d", st.Chunks, st.ChunkBytes, len(puts), total)
			}
		})
	}
}

func TestGetChunkReturnsCopy(t *testing.T) {
	c, _ := openTemp(t)
	ctx := context.Background()
	p := testChunk(1, 1000)
	if err := c.PutChunks(ctx, []ChunkPut{p}); err != nil {
		t.Fatal(err)
	}
	a, _ := c.GetChunk(ctx, p.ID)
	a[0] ^= 0xff
	b, _ := c.GetChunk(ctx, p.ID)
	if !bytes.Equal(b, p.Obj) {
		t.Fatal("modifying a returned object changed the stored one")
	}
}

// TestReadChunk: fn sees the stored object, its error comes back as it is, and a
// missing chunk is shoal.ErrNotFound without fn being called.
func TestReadChunk(t *testing.T) {
	c, _ := openTemp(t)
	ctx := context.Background()
	p := testChunk(1, 1000)
	if err := c.PutChunks(ctx, []ChunkPut{p}); err != nil {
		t.Fatal(err)
	}
	var seen []byte
	if err := c.ReadChunk(ctx, p.ID, func(obj []byte) error { seen = bytes.Clone(obj); return nil }); err != nil || !bytes.Equal(seen, p.Obj) {
		t.Fatalf("ReadChunk = %v, saw %d bytes of %d", err, len(seen), len(p.Obj))
	}
	boom := errors.New("fn failed")
	if err := c.ReadChunk(ctx, p.ID, func([]byte) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("ReadChunk with a failing fn = %v, want %v", err, boom)
	}
	called := false
	err := c.ReadChunk(ctx, testChunk(2, 10).ID, func([]byte) error { called = true; return nil })
	if !errors.Is(err, shoal.ErrNotFound) || called {
		t.Fatalf("ReadChunk of a missing chunk = %v (fn called: %v), want shoal.ErrNotFound", err, called)
	}
}

func TestPutChunksSkipsExisting(t *testing.T) {
	c, path := openTemp(t)
	ctx := context.Background()
	var puts []ChunkPut
	for i := range 300 {
		puts = append(puts, testChunk(uint64(i), 64<<10))
	}
	if err := c.PutChunks(ctx, puts); err != nil {
		t.Fatal(err)
	}
	before, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	sizeBefore := fileSize(t, path)

	tests := []struct {
		name string
		puts []ChunkPut
	}{
		{"same batch again", puts},
		{"one already present", puts[7:8]},
		{"duplicates within a batch", []ChunkPut{puts[3], puts[3], puts[3]}},
		{"reversed", func() []ChunkPut {
			r := make([]ChunkPut, len(puts))
			for i := range puts {
				r[len(puts)-1-i] = puts[i]
			}
			return r
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.PutChunks(ctx, tt.puts); err != nil {
				t.Fatal(err)
			}
			after, err := c.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if after.Chunks != before.Chunks || after.ChunkBytes != before.ChunkBytes {
				t.Fatalf("totals changed: %+v -> %+v", before, after)
			}
			if got := fileSize(t, path); got != sizeBefore {
				t.Fatalf("file grew from %d to %d on a repeated put", sizeBefore, got)
			}
		})
	}

	t.Run("new duplicate within one batch counted once", func(t *testing.T) {
		p := testChunk(9999, 4096)
		if err := c.PutChunks(ctx, []ChunkPut{p, p}); err != nil {
			t.Fatal(err)
		}
		st, _ := c.Stats()
		if st.Chunks != before.Chunks+1 || st.ChunkBytes != before.ChunkBytes+4096 {
			t.Fatalf("Stats = %+v, want one more chunk of 4096 bytes than %+v", st, before)
		}
	})
}

func TestPutChunksRejectsEmptyObject(t *testing.T) {
	c, _ := openTemp(t)
	err := c.PutChunks(context.Background(), []ChunkPut{testChunk(1, 10), {ID: chunk.ID{1}}})
	if err == nil {
		t.Fatal("PutChunks accepted an empty object")
	}
	if st, _ := c.Stats(); st.Chunks != 0 {
		t.Fatalf("a rejected batch stored %d chunks", st.Chunks)
	}
}

func TestPutChunksCancelled(t *testing.T) {
	c, _ := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := testChunk(1, 10)
	if err := c.PutChunks(ctx, []ChunkPut{p}); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutChunks with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := c.GetChunk(context.Background(), p.ID); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("chunk stored despite cancelled context: %v", err)
	}
}

func TestChunkLookups(t *testing.T) {
	c, _ := openTemp(t)
	ctx := context.Background()
	a, b, absent := testChunk(1, 100), testChunk(2, 200), testChunk(3, 300)
	if err := c.PutChunks(ctx, []ChunkPut{a, b}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetChunk(ctx, absent.ID); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("GetChunk(absent) = %v, want shoal.ErrNotFound", err)
	}
	tests := []struct {
		name string
		ids  []chunk.ID
		want []bool
	}{
		{"none", nil, []bool{}},
		{"all present", []chunk.ID{a.ID, b.ID}, []bool{true, true}},
		{"mixed", []chunk.ID{absent.ID, b.ID, absent.ID, a.ID}, []bool{false, true, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.HasChunks(tt.ids)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("HasChunks = %v, want %v", got, tt.want)
			}
		})
	}

	if err := c.DeleteChunk(a.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteChunk(a.ID); err != nil {
		t.Fatalf("deleting an absent chunk: %v", err)
	}
	if _, err := c.GetChunk(ctx, a.ID); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("GetChunk after DeleteChunk = %v, want shoal.ErrNotFound", err)
	}
	st, _ := c.Stats()
	if st.Chunks != 1 || st.ChunkBytes != 200 {
		t.Fatalf("Stats after delete = %d chunks / %d bytes, want 1 / 200", st.Chunks, st.ChunkBytes)
	}
	// A deleted chunk can be stored again, e.g. after a fresh fetch.
	if err := c.PutChunks(ctx, []ChunkPut{a}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetChunk(ctx, a.ID); err != nil || !bytes.Equal(got, a.Obj) {
		t.Fatalf("GetChunk after re-put: %v", err)
	}
}

func TestForEachChunk(t *testing.T) {
	c, _ := openTemp(t)
	ctx := context.Background()
	want := map[chunk.ID][]byte{}
	var puts []ChunkPut
	for i := range 50 {
		p := testChunk(uint64(i), 1000+i)
		puts = append(puts, p)
		want[p.ID] = p.Obj
	}
	if err := c.PutChunks(ctx, puts); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteChunk(puts[10].ID); err != nil {
		t.Fatal(err)
	}
	delete(want, puts[10].ID)

	seen := map[chunk.ID]bool{}
	err := c.ForEachChunk(ctx, func(id chunk.ID, obj []byte) error {
		if !bytes.Equal(obj, want[id]) {
			return fmt.Errorf("chunk %x: wrong object", id[:4])
		}
		seen[id] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(want) {
		t.Fatalf("visited %d chunks, want %d", len(seen), len(want))
	}

	stop := errors.New("stop")
	n := 0
	err = c.ForEachChunk(ctx, func(chunk.ID, []byte) error {
		n++
		if n == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 5 {
		t.Fatalf("ForEachChunk after callback error: err=%v after %d calls", err, n)
	}
}

func TestConcurrentPutGet(t *testing.T) {
	c, _ := openTemp(t)
	ctx := context.Background()
	const workers, perWorker = 16, 40
	// Workers overlap: each also stores a few of its neighbour's chunks,
	// so concurrent puts of the same ID race inside shared transactions.
	chunkFor := func(w, i int) ChunkPut { return testChunk(uint64(w*perWorker+i), 4096+i*16) }
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i += 4 {
				batch := []ChunkPut{chunkFor(w, i), chunkFor(w, i+1), chunkFor(w, i+2), chunkFor(w, i+3), chunkFor((w+1)%workers, i)}
				if err := c.PutChunks(ctx, batch); err != nil {
					errs <- err
					return
				}
				for _, p := range batch {
					got, err := c.GetChunk(ctx, p.ID)
					if err != nil {
						errs <- fmt.Errorf("worker %d: GetChunk right after PutChunks: %w", w, err)
						return
					}
					if !bytes.Equal(got, p.Obj) {
						errs <- fmt.Errorf("worker %d: wrong bytes", w)
						return
					}
				}
				// Read another worker's chunk, which may or may not be there yet.
				other := chunkFor((w+3)%workers, i)
				if got, err := c.GetChunk(ctx, other.ID); err == nil && !bytes.Equal(got, other.Obj) {
					errs <- fmt.Errorf("worker %d: wrong bytes for another worker's chunk", w)
					return
				} else if err != nil && !errors.Is(err, shoal.ErrNotFound) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var wantBytes int64
	for w := range workers {
		for i := range perWorker {
			wantBytes += int64(len(chunkFor(w, i).Obj))
		}
	}
	if st.Chunks != workers*perWorker || st.ChunkBytes != wantBytes {
		t.Fatalf("Stats = %d chunks / %d bytes, want %d / %d", st.Chunks, st.ChunkBytes, workers*perWorker, wantBytes)
	}
}

func TestManifests(t *testing.T) {
	c, _ := openTemp(t)
	digest := func(s string) [32]byte { return sha256.Sum256([]byte(s)) }
	if _, err := c.GetManifest("absent"); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("GetManifest(absent) = %v, want shoal.ErrNotFound", err)
	}
	tests := []struct {
		key  string
		data []byte
	}{
		{"0rb6f8cbv4g2gcqlp5nq4s5kfq3a7zyskfbcw3yrcqpd8ssa0y1f", []byte("manifest one")},
		{"1rb6f8cbv4g2gcqlp5nq4s5kfq3a7zyskfbcw3yrcqpd8ssa0y1f", bytes.Repeat([]byte{7}, 100_000)},
		{"empty", []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if err := c.PutManifest(tt.key, tt.data); err != nil {
				t.Fatal(err)
			}
			got, err := c.GetManifest(tt.key)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("GetManifest = %d bytes, %v; want %d bytes", len(got), err, len(tt.data))
			}
			d := digest(string(tt.data))
			if ok, err := c.IsVerified(tt.key, d); err != nil || ok {
				t.Fatalf("IsVerified before MarkVerified = %v, %v", ok, err)
			}
			if err := c.MarkVerified(tt.key, d); err != nil {
				t.Fatal(err)
			}
			if ok, err := c.IsVerified(tt.key, d); err != nil || !ok {
				t.Fatalf("IsVerified after MarkVerified = %v, %v", ok, err)
			}
			if ok, _ := c.IsVerified(tt.key, digest("another manifest")); ok {
				t.Fatal("verified mark applies to a different manifest digest")
			}
			if err := c.DeleteManifest(tt.key); err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetManifest(tt.key); !errors.Is(err, shoal.ErrNotFound) {
				t.Fatalf("GetManifest after delete = %v", err)
			}
			if ok, _ := c.IsVerified(tt.key, d); ok {
				t.Fatal("verified mark survived DeleteManifest")
			}
		})
	}
	if err := c.PutManifest("", []byte("x")); err == nil {
		t.Fatal("PutManifest accepted an empty key")
	}
	if err := c.DeleteManifest("never-stored"); err != nil {
		t.Fatalf("DeleteManifest(absent) = %v", err)
	}
}

func TestNarInfoExpiry(t *testing.T) {
	c, _ := openTemp(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 500, time.UTC)
	pos := NarInfoEntry{Raw: []byte("StorePath: /nix/store/abc-foo\n"), Source: "https://cache.nixos.org", Expires: t0.Add(time.Hour)}
	neg := NarInfoEntry{Source: "https://cache.nixos.org", Negative: true, Reason: "not found", Expires: t0.Add(time.Minute)}
	if err := c.PutNarInfo("pos", pos); err != nil {
		t.Fatal(err)
	}
	if err := c.PutNarInfo("neg", neg); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, key string
		now       time.Time
		want      *NarInfoEntry
	}{
		{"positive fresh", "pos", t0, &pos},
		{"positive just before expiry", "pos", t0.Add(time.Hour - time.Nanosecond), &pos},
		{"positive at expiry", "pos", t0.Add(time.Hour), nil},
		{"positive after expiry", "pos", t0.Add(2 * time.Hour), nil},
		{"negative fresh", "neg", t0.Add(30 * time.Second), &neg},
		{"negative expired", "neg", t0.Add(2 * time.Minute), nil},
		{"absent", "nope", t0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.GetNarInfo(tt.key, tt.now)
			if tt.want == nil {
				if !errors.Is(err, shoal.ErrNotFound) {
					t.Fatalf("GetNarInfo = %+v, %v; want shoal.ErrNotFound", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !narInfoEqual(*got, *tt.want) {
				t.Fatalf("GetNarInfo = %+v, want %+v", *got, *tt.want)
			}
		})
	}

	removed, err := c.Prune(t0.Add(2 * time.Minute))
	if err != nil || removed != 1 {
		t.Fatalf("Prune after the negative entry expired = %d, %v; want 1", removed, err)
	}
	if st, _ := c.Stats(); st.NarInfos != 1 {
		t.Fatalf("NarInfos after prune = %d, want 1", st.NarInfos)
	}
}

// TestHoldsNarInfo: what a caller made of a cached narinfo stands only while the cache
// holds exactly those bytes, from the same source, unexpired; a replaced, expired,
// negative or pruned entry sends it back to GetNarInfo.
func TestHoldsNarInfo(t *testing.T) {
	c, _ := openTemp(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	raw := []byte("StorePath: /nix/store/abc-foo\n")
	const src = "https://cache.example"
	put := func(key string, e NarInfoEntry) {
		if err := c.PutNarInfo(key, e); err != nil {
			t.Fatal(err)
		}
	}
	put("pos", NarInfoEntry{Raw: raw, Source: src, Expires: t0.Add(time.Hour)})
	put("replaced", NarInfoEntry{Raw: raw, Source: src, Expires: t0.Add(time.Hour)})
	put("replaced", NarInfoEntry{Raw: []byte("StorePath: /nix/store/abc-foo\nSig: x\n"), Source: src, Expires: t0.Add(time.Hour)})
	put("neg", NarInfoEntry{Source: src, Negative: true, Reason: "not found", Expires: t0.Add(time.Hour)})
	tests := []struct {
		name, key, source string
		raw               []byte
		now               time.Time
		want              bool
	}{
		{"same bytes and source", "pos", src, raw, t0, true},
		{"other bytes", "pos", src, []byte("StorePath: /nix/store/abc-foo\nSig: x\n"), t0, false},
		{"a prefix of the bytes", "pos", src, raw[:10], t0, false},
		{"other source", "pos", "https://other.example", raw, t0, false},
		{"expired", "pos", src, raw, t0.Add(time.Hour), false},
		{"replaced since", "replaced", src, raw, t0, false},
		{"negative", "neg", src, nil, t0, false},
		{"absent", "nope", src, raw, t0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.HoldsNarInfo(tt.key, tt.raw, tt.source, tt.now); got != tt.want {
				t.Fatalf("HoldsNarInfo = %v, want %v", got, tt.want)
			}
		})
	}
}

func narInfoEqual(a, b NarInfoEntry) bool {
	return bytes.Equal(a.Raw, b.Raw) && (a.Raw == nil) == (b.Raw == nil) &&
		a.Source == b.Source && a.Negative == b.Negative && a.Reason == b.Reason && a.Expires.Equal(b.Expires)
}

func routeEqual(a, b NarRoute) bool {
	return a.HashPart == b.HashPart && a.StorePath == b.StorePath && a.Source == b.Source &&
		a.NarSize == b.NarSize && a.LastUsed.Equal(b.LastUsed)
}

func TestRoutesOutliveNarInfo(t *testing.T) {
	c, _ := openTemp(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	const narKey = "1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3"
	route := NarRoute{HashPart: "abc", StorePath: "/nix/store/abc-foo", Source: "https://cache.nixos.org", NarSize: 123456, LastUsed: t0}
	if err := c.PutNarRoute(narKey, route); err != nil {
		t.Fatal(err)
	}
	if err := c.PutNarInfo("abc", NarInfoEntry{Raw: []byte("x"), Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetNarRoute(narKey)
	if err != nil || !routeEqual(*got, route) {
		t.Fatalf("GetNarRoute = %+v, %v; want %+v", got, err, route)
	}
	if _, err := c.GetNarRoute("absent"); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("GetNarRoute(absent) = %v", err)
	}
	if err := c.TouchNarRoute("absent", t0); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("TouchNarRoute(absent) = %v", err)
	}

	// Each step runs in order against the same cache.
	steps := []struct {
		name        string
		touch       bool
		at          time.Time
		wantRemoved int
		wantRoute   bool
		wantUsed    time.Time
	}{
		{"narinfo expires, route stays", false, t0.Add(2 * time.Hour), 1, true, t0},
		{"30 days unused: route stays", false, t0.Add(30 * day), 0, true, t0},
		{"use on day 31", true, t0.Add(31 * day), 0, true, t0.Add(31 * day)},
		{"touch within the hour is not written", true, t0.Add(31*day + 10*time.Minute), 0, true, t0.Add(31 * day)},
		{"45 days after first use: still used recently", false, t0.Add(46 * day), 0, true, t0.Add(31 * day)},
		{"exactly 45 days after last use: stays", false, t0.Add(76 * day), 0, true, t0.Add(31 * day)},
		{"a day past 45 days unused: pruned", false, t0.Add(77 * day), 1, false, time.Time{}},
	}
	for _, s := range steps {
		if s.touch {
			if err := c.TouchNarRoute(narKey, s.at); err != nil {
				t.Fatalf("%s: TouchNarRoute: %v", s.name, err)
			}
		} else {
			removed, err := c.Prune(s.at)
			if err != nil || removed != s.wantRemoved {
				t.Fatalf("%s: Prune = %d, %v; want %d", s.name, removed, err, s.wantRemoved)
			}
		}
		r, err := c.GetNarRoute(narKey)
		if !s.wantRoute {
			if !errors.Is(err, shoal.ErrNotFound) {
				t.Fatalf("%s: route still there: %+v, %v", s.name, r, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if !r.LastUsed.Equal(s.wantUsed) {
			t.Fatalf("%s: LastUsed = %v, want %v", s.name, r.LastUsed, s.wantUsed)
		}
	}
}

func TestPutNarRouteDatesUndatedRoutes(t *testing.T) {
	c, _ := openTemp(t)
	before := time.Now()
	if err := c.PutNarRoute("k", NarRoute{HashPart: "abc"}); err != nil {
		t.Fatal(err)
	}
	r, err := c.GetNarRoute("k")
	if err != nil {
		t.Fatal(err)
	}
	if r.LastUsed.Before(before.Add(-time.Second)) {
		t.Fatalf("undated route stored with LastUsed %v", r.LastUsed)
	}
	if n, _ := c.Prune(time.Now()); n != 0 {
		t.Fatalf("Prune removed a route stored just now")
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	ctx := context.Background()
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	p := testChunk(42, 64<<10)
	digest := sha256.Sum256([]byte("m"))
	entry := NarInfoEntry{Raw: []byte("StorePath: x\n"), Source: "s", Expires: t0.Add(time.Hour)}
	route := NarRoute{HashPart: "h", StorePath: "/nix/store/h-x", Source: "s", NarSize: 9, LastUsed: t0}

	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		c.PutChunks(ctx, []ChunkPut{p}),
		c.PutManifest("m", []byte("manifest")),
		c.MarkVerified("m", digest),
		c.PutNarInfo("h", entry),
		c.PutNarRoute("nk", route),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	want, _ := c.Stats()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetManifest("m"); err == nil {
		t.Fatal("GetManifest succeeded on a closed cache")
	}

	c, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer c.Close()
	if got, err := c.GetChunk(ctx, p.ID); err != nil || !bytes.Equal(got, p.Obj) {
		t.Fatalf("chunk after reopen: %v", err)
	}
	if got, err := c.GetManifest("m"); err != nil || string(got) != "manifest" {
		t.Fatalf("manifest after reopen: %q, %v", got, err)
	}
	if ok, err := c.IsVerified("m", digest); err != nil || !ok {
		t.Fatalf("verified mark after reopen: %v, %v", ok, err)
	}
	if e, err := c.GetNarInfo("h", t0); err != nil || !narInfoEqual(*e, entry) {
		t.Fatalf("narinfo after reopen: %+v, %v", e, err)
	}
	if r, err := c.GetNarRoute("nk"); err != nil || !routeEqual(*r, route) {
		t.Fatalf("route after reopen: %+v, %v", r, err)
	}
	got, _ := c.Stats()
	got.FileBytes, want.FileBytes = 0, 0
	if got != want {
		t.Fatalf("Stats after reopen = %+v, want %+v", got, want)
	}
	// Sequences continue after reopen rather than overwriting bodies.
	q := testChunk(43, 1000)
	if err := c.PutChunks(ctx, []ChunkPut{q}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetChunk(ctx, p.ID); err != nil || !bytes.Equal(got, p.Obj) {
		t.Fatalf("first chunk after a put following reopen: %v", err)
	}
}

func TestSecondOpenFailsWhileLocked(t *testing.T) {
	_, path := openTemp(t)
	timeout := 200 * time.Millisecond
	start := time.Now()
	c2, err := Open(path, Options{Timeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		c2.Close()
		t.Fatal("second Open of a locked file succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if elapsed < timeout/2 || elapsed > timeout+2*time.Second {
		t.Fatalf("second Open gave up after %v, want about %v", elapsed, timeout)
	}
	t.Logf("error text: %v", err)
}

func TestOpenRefusesForeignFiles(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(tx *bolt.Tx) error
		wantErr error // nil: any error will do
		ok      bool
	}{
		{"newer schema", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, schemaVersion+1))
		}, ErrSchemaTooNew, false},
		{"current schema", func(tx *bolt.Tx) error { return nil }, nil, true},
		{"not a shoal cache", func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketMeta); err != nil {
				return err
			}
			_, err := tx.CreateBucketIfNotExists([]byte("something-else"))
			return err
		}, nil, false},
		{"mangled schema record", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keySchema, []byte{1})
		}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			c, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(tt.prepare); err != nil {
				t.Fatal(err)
			}
			db.Close()
			c, err = Open(path, Options{})
			if tt.ok {
				if err != nil {
					t.Fatalf("Open = %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestPackages(t *testing.T) {
	c, path := openTemp(t)
	if ok, err := c.HasPackage("go"); err != nil || ok {
		t.Fatalf("empty cache has package: %v %v", ok, err)
	}
	if err := c.PutPackage("go", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"); err != nil {
		t.Fatal(err)
	}
	if err := c.PutPackage("", "x"); err == nil {
		t.Error("empty package name accepted")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for name, want := range map[string]bool{"go": true, "gopls": false} {
		if ok, err := c.HasPackage(name); err != nil || ok != want {
			t.Errorf("HasPackage(%q) = %v, %v; want %v", name, ok, err, want)
		}
	}
}
