package localcache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	bolt "go.etcd.io/bbolt"
)

func openBudget(t testing.TB, budget int64) (*Cache, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	c, err := Open(path, Options{InitialMmapSize: 64 << 20, Budget: budget})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

// testNAR stores n chunks of size bytes as one NAR with a manifest under a
// key derived from seed, as the assembler does, and returns key and chunks.
// testChunks returns n chunks of a NAR, made from seed.
func testChunks(seed uint64, n, size int) []ChunkPut {
	puts := make([]ChunkPut, n)
	for i := range puts {
		puts[i] = testChunk(seed<<16|uint64(i), size)
	}
	return puts
}

func testNAR(t testing.TB, c *Cache, seed uint64, n, size int) (string, []ChunkPut) {
	t.Helper()
	puts := testChunks(seed, n, size)
	m := &manifest.Manifest{Chunker: chunk.DefaultParams().Identity()}
	for i := range puts {
		m.Entries = append(m.Entries, manifest.Entry{ID: puts[i].ID, Size: 20000, StoredSize: uint32(size)})
		m.NarSize += 20000
	}
	m.NarHash = sha256.Sum256(fmt.Appendf(nil, "nar %d", seed))
	raw, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	key := manifest.Key(m.NarHash)
	if err := c.PutChunks(context.Background(), puts); err != nil {
		t.Fatalf("PutChunks: %v", err)
	}
	if err := c.PutManifest(key, raw); err != nil {
		t.Fatal(err)
	}
	if err := c.TouchNAR(key, ""); err != nil {
		t.Fatal(err)
	}
	return key, puts
}

func countPresent(t testing.TB, c *Cache, puts []ChunkPut) int {
	t.Helper()
	ids := make([]chunk.ID, len(puts))
	for i := range puts {
		ids[i] = puts[i].ID
	}
	have, err := c.HasChunks(ids)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, h := range have {
		if h {
			n++
		}
	}
	return n
}

func TestBudgetBoundsTheFile(t *testing.T) {
	const budget = 8 << 20
	c, path := openBudget(t, budget)
	var nars [][]ChunkPut
	// 40 NARs of 8 x 64 KiB: 20 MiB written, 2.5 times the budget.
	for i := range 40 {
		_, puts := testNAR(t, c, uint64(i+1), 8, 64<<10)
		nars = append(nars, puts)
		if fs := fileSize(t, path); fs > budget {
			t.Fatalf("after NAR %d the file is %d bytes, budget %d", i, fs, budget)
		}
	}
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("file %d, used %d, budget %d, evicted %d chunks", u.FileBytes, u.UsedBytes, budget, u.Evictions)
	if u.Evictions == 0 || u.UsedBytes > budget || u.OverBudget {
		t.Fatalf("usage %+v: want evictions and data under %d", u, budget)
	}
	if got := countPresent(t, c, nars[len(nars)-1]); got != 8 {
		t.Errorf("newest NAR has %d of 8 chunks", got)
	}
	if got := countPresent(t, c, nars[0]); got != 0 {
		t.Errorf("oldest NAR still has %d chunks", got)
	}
	s, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.Manifests >= 40 {
		t.Errorf("%d manifests kept; the ones with no chunk left should go", s.Manifests)
	}
}

func TestEvictionOrder(t *testing.T) {
	tests := []struct {
		name     string
		touch    []int // NARs (by index) used again after all were stored
		pin      []int
		wantGone []int
	}{
		{"oldest goes first", nil, nil, []int{0}},
		{"a use makes a NAR young", []int{0}, nil, []int{1}},
		{"pins win", nil, []int{0}, []int{1}},
		{"pinned and used", []int{1}, []int{0}, []int{2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := openBudget(t, 0)
			var keys []string
			var nars [][]ChunkPut
			for i := range 4 {
				k, p := testNAR(t, c, uint64(i+1), 4, 32<<10)
				keys, nars = append(keys, k), append(nars, p)
				hp := "0000000000000000000000000000000" + string("abcd"[i])
				if err := c.PutNarRoute(k, NarRoute{HashPart: hp, StorePath: "/nix/store/" + hp + "-p"}); err != nil {
					t.Fatal(err)
				}
			}
			for _, i := range tc.touch {
				if err := c.TouchNAR(keys[i], ""); err != nil {
					t.Fatal(err)
				}
			}
			var pins []string
			for _, i := range tc.pin {
				pins = append(pins, "/nix/store/0000000000000000000000000000000"+string("abcd"[i])+"-p")
			}
			if err := c.Pin("", pins); err != nil {
				t.Fatal(err)
			}
			u, err := c.Usage()
			if err != nil {
				t.Fatal(err)
			}
			// Free about one NAR's worth.
			res, err := c.Evict(context.Background(), u.UsedBytes-3*(32<<10))
			if err != nil {
				t.Fatal(err)
			}
			gone := map[int]bool{}
			for _, i := range tc.wantGone {
				gone[i] = true
			}
			for i := range nars {
				n := countPresent(t, c, nars[i])
				if gone[i] && n == 4 {
					t.Errorf("NAR %d kept all chunks; want it evicted first (result %+v)", i, res)
				}
				if !gone[i] && n != 4 {
					t.Errorf("NAR %d lost %d chunks; want NAR(s) %v to go first", i, 4-n, tc.wantGone)
				}
			}
		})
	}
}

func TestPinsHoldAgainstBudget(t *testing.T) {
	c, _ := openBudget(t, 0)
	key, puts := testNAR(t, c, 1, 8, 32<<10)
	_, other := testNAR(t, c, 2, 8, 32<<10)
	const path = "/nix/store/00000000000000000000000000000000-pinned-1.0"
	// Pinned before the path was ever served: TouchNAR teaches the pin its NAR.
	if err := c.Pin("", []string{path}); err != nil {
		t.Fatal(err)
	}
	if err := c.TouchNAR(key, "00000000000000000000000000000000"); err != nil {
		t.Fatal(err)
	}
	pins, err := c.Pins()
	if err != nil || len(pins) != 1 || pins[0].NarKey != key {
		t.Fatalf("Pins = %+v, %v; want one pin on NAR %s", pins, err, key)
	}
	res, err := c.Evict(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.TargetReached || res.PinnedBytes != 8*(32<<10) {
		t.Errorf("evict to 0: %+v; want the pinned 256 KiB kept and the target missed", res)
	}
	if countPresent(t, c, puts) != 8 || countPresent(t, c, other) != 0 {
		t.Errorf("pinned NAR has %d/8, unpinned %d/8; want 8 and 0", countPresent(t, c, puts), countPresent(t, c, other))
	}
	if n, err := c.Unpin([]string{path}); err != nil || n != 1 {
		t.Fatalf("Unpin = %d, %v", n, err)
	}
	if _, err := c.Evict(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if n := countPresent(t, c, puts); n != 0 {
		t.Errorf("unpinned NAR kept %d chunks", n)
	}
}

func TestPinRefusesBadPaths(t *testing.T) {
	c, _ := openBudget(t, 0)
	for _, p := range []string{"", "/nix/store/short-x", "hello", "/nix/store/00000000000000000000000000000000", "/nix/store/e0000000000000000000000000000000-x"} {
		if err := c.Pin("", []string{"/nix/store/00000000000000000000000000000000-ok", p}); err == nil {
			t.Errorf("Pin(%q) succeeded", p)
		}
	}
	if pins, _ := c.Pins(); len(pins) != 0 {
		t.Errorf("a refused batch left pins: %+v", pins)
	}
}

func TestReplacePinsKeepsUserPins(t *testing.T) {
	c, _ := openBudget(t, 0)
	a := "/nix/store/00000000000000000000000000000000-a"
	b := "/nix/store/11111111111111111111111111111111-b"
	d := "/nix/store/22222222222222222222222222222222-d"
	if err := c.Pin("", []string{a}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReplacePins("closure-of:/run/current-system", []string{b}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReplacePins("closure-of:/run/current-system", []string{d}); err != nil {
		t.Fatal(err)
	}
	pins, err := c.Pins()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range pins {
		got[p.StorePath] = p.Origin
	}
	if len(got) != 2 || got[a] != "" || got[d] != "closure-of:/run/current-system" {
		t.Errorf("pins = %v; want %s (user) and %s (closure)", got, a, d)
	}
}

func TestLeaseProtects(t *testing.T) {
	tests := []struct {
		name string
		// run takes a lease and stores or claims chunks; it returns the chunks
		// that must survive an eviction to zero while the lease is held.
		run func(t *testing.T, c *Cache, l *Lease, old []ChunkPut) []ChunkPut
	}{
		{"listed chunks", func(t *testing.T, c *Cache, l *Lease, old []ChunkPut) []ChunkPut {
			l.Add(old[0].ID, old[1].ID)
			return old[:2]
		}},
		{"chunks added before they are stored", func(t *testing.T, c *Cache, l *Lease, old []ChunkPut) []ChunkPut {
			fresh := testChunks(99, 3, 16<<10)
			for _, p := range fresh {
				l.Add(p.ID)
			}
			if err := c.PutChunks(context.Background(), fresh); err != nil {
				t.Fatal(err)
			}
			return fresh
		}},
		{"old chunks added and put again", func(t *testing.T, c *Cache, l *Lease, old []ChunkPut) []ChunkPut {
			l.Add(old[2].ID, old[3].ID)
			if err := c.PutChunks(context.Background(), old[2:4]); err != nil {
				t.Fatal(err)
			}
			return old[2:4]
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := openBudget(t, 0)
			_, old := testNAR(t, c, 1, 6, 16<<10)
			l, err := c.Lease()
			if err != nil {
				t.Fatal(err)
			}
			keep := tc.run(t, c, l, old)
			if _, err := c.Evict(context.Background(), 0); err != nil {
				t.Fatal(err)
			}
			if n := countPresent(t, c, keep); n != len(keep) {
				t.Fatalf("%d of %d leased chunks survived", n, len(keep))
			}
			l.Release()
			l.Release()
			if _, err := c.Evict(context.Background(), 0); err != nil {
				t.Fatal(err)
			}
			if n := countPresent(t, c, keep); n != 0 {
				t.Fatalf("%d chunks survived after release", n)
			}
		})
	}
}

// TestLeaseCoversOnlyItsChunks holds a lease, as a client that stops reading its NAR
// does, while other NARs are stored: eviction still takes their chunks, so one stalled
// reader cannot switch the cache budget off.
func TestLeaseCoversOnlyItsChunks(t *testing.T) {
	c, _ := openBudget(t, 0)
	_, stalled := testNAR(t, c, 1, 4, 16<<10)
	l, err := c.Lease()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	for _, p := range stalled {
		l.Add(p.ID)
	}
	_, others := testNAR(t, c, 2, 6, 16<<10)
	res, err := c.Evict(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := countPresent(t, c, stalled); n != len(stalled) {
		t.Errorf("%d of the leased NAR's %d chunks survived", n, len(stalled))
	}
	if n := countPresent(t, c, others); n != 0 {
		t.Errorf("%d chunks of NARs stored after the lease survived an eviction to zero (%+v)", n, res)
	}
}

// TestEvictionUnderConcurrentServing runs NAR "serves" (lease, store, read
// every chunk back) against a budget far smaller than what they write: no
// serve may ever miss a chunk of its own NAR.
func TestEvictionUnderConcurrentServing(t *testing.T) {
	const budget = 6 << 20
	c, path := openBudget(t, budget)
	_, shared := testNAR(t, c, 1000, 8, 32<<10) // every NAR reuses these
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 12 {
				l, err := c.Lease()
				if err != nil {
					errs <- err
					return
				}
				// As the fetcher does: each chunk of the NAR is leased before it is
				// stored or looked up, whether it is new or (a whole NAR that dedups
				// against old chunks) put again.
				own := testChunks(uint64(w*100+i+1), 6, 48<<10)
				for _, p := range append(own, shared...) {
					l.Add(p.ID)
				}
				if err := c.PutChunks(context.Background(), own); err != nil {
					errs <- err
				}
				if err := c.PutChunks(context.Background(), shared); err != nil {
					errs <- err
				}
				for _, p := range append(own, shared...) {
					if _, err := c.GetChunk(context.Background(), p.ID); err != nil {
						errs <- fmt.Errorf("worker %d NAR %d: chunk %x: %w", w, i, p.ID[:4], err)
					}
				}
				l.Release()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.Evictions == 0 {
		t.Errorf("no evictions; the test wrote %d bytes against a %d budget", 4*12*6*(48<<10), budget)
	}
	if fs := fileSize(t, path); fs > budget+budget/4 {
		t.Errorf("file is %d bytes against a budget of %d", fs, budget)
	}
	t.Logf("usage after concurrent serving: %+v", u)
}

func realChunks(t testing.TB, codec *chunk.Codec, n int) []ChunkPut {
	puts := make([]ChunkPut, n)
	for i := range puts {
		raw := testChunk(uint64(i+7), 20000).Obj
		puts[i] = ChunkPut{ID: chunk.Sum(raw), Obj: codec.Encode(nil, raw)}
	}
	return puts
}

func TestVerify(t *testing.T) {
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	tests := []struct {
		name     string
		damage   func(tx *bolt.Tx, puts []ChunkPut) error
		bad      int
		dangling int
	}{
		{"clean", func(*bolt.Tx, []ChunkPut) error { return nil }, 0, 0},
		{"flipped byte", func(tx *bolt.Tx, puts []ChunkPut) error {
			sk := tx.Bucket(bucketChunkIndex).Get(puts[2].ID[:])
			v := append([]byte{}, tx.Bucket(bucketChunkBody).Get(sk)...)
			v[len(v)-10] ^= 0xff
			return tx.Bucket(bucketChunkBody).Put(append([]byte{}, sk...), v)
		}, 1, 0},
		{"index without body", func(tx *bolt.Tx, puts []ChunkPut) error {
			sk := append([]byte{}, tx.Bucket(bucketChunkIndex).Get(puts[3].ID[:])...)
			return tx.Bucket(bucketChunkBody).Delete(sk)
		}, 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := openBudget(t, 0)
			puts := realChunks(t, codec, 6)
			if err := c.PutChunks(context.Background(), puts); err != nil {
				t.Fatal(err)
			}
			if err := c.db.Update(func(tx *bolt.Tx) error { return tc.damage(tx, puts) }); err != nil {
				t.Fatal(err)
			}
			rep, err := c.Verify(context.Background(), codec, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Bad) != tc.bad || rep.Dangling != tc.dangling {
				t.Fatalf("report %+v; want %d bad, %d dangling", rep, tc.bad, tc.dangling)
			}
			if _, err := c.Verify(context.Background(), codec, true); err != nil {
				t.Fatal(err)
			}
			rep, err = c.Verify(context.Background(), codec, false)
			if err != nil || !rep.Clean() {
				t.Fatalf("after repair: %+v, %v", rep, err)
			}
			s, _ := c.Stats()
			if want := 6 - tc.bad - tc.dangling; s.Chunks != want || rep.Checked != want {
				t.Errorf("after repair %d chunks counted, %d checked; want %d", s.Chunks, rep.Checked, want)
			}
		})
	}
}

func TestCompact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	c, err := Open(path, Options{InitialMmapSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := testNAR(t, c, 1, 64, 64<<10)
	if _, _, err := Compact(context.Background(), path, 100e6); !errors.Is(err, ErrLocked) {
		t.Fatalf("Compact while open: %v; want ErrLocked", err)
	}
	if _, err := c.Evict(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	before, after, err := Compact(context.Background(), path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after >= before/2 {
		t.Errorf("compaction took %d to %d bytes; want less than half", before, after)
	}
	c, err = Open(path, Options{InitialMmapSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.GetManifest(key); !errors.Is(err, shoal.ErrNotFound) {
		t.Errorf("manifest of a NAR evicted whole: %v; want it dropped", err)
	}
	if s, err := c.Stats(); err != nil || s.Chunks != 0 {
		t.Errorf("after compaction: %+v, %v; want no chunks", s, err)
	}
	if fs := fileSize(t, path); fs != after {
		t.Errorf("reopened file is %d bytes, compaction reported %d", fs, after)
	}
}
