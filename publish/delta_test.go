package publish_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// nextRelease is base with the kind of edit a new release makes to a binary: a few
// bytes changed every stride bytes (shifted addresses) and a short insertion, so
// nearly every chunk is new while each is almost the same as the base's.
func nextRelease(base []byte, seed byte, stride int) []byte {
	out := bytes.Clone(base)
	for i := stride / 2; i < len(out); i += stride {
		out[i] ^= seed
	}
	mid := len(out) / 3
	return append(out[:mid:mid], append([]byte("version string of release "+string('a'+rune(seed%26))), out[mid:]...)...)
}

func runWith(t testing.TB, cache *cachetest.Cache, storeDir string, opts publish.Options, hashParts ...string) (publish.Summary, error) {
	t.Helper()
	src, err := blob.Open(cache.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := chunkstore.Open(storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := nixcache.ParseKeyring([]string{cache.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Params == (chunk.Params{}) {
		opts.Params = smallParams
	}
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	return p.Run(context.Background(), hashParts)
}

var deltaOpts = publish.Options{Jobs: 2, Deltas: true}

// checkDeltas decodes every delta of the manifest of ni against its base chunks, as
// read from the store, and returns how many there are. It fails the test unless each
// decodes to its entry's chunk and the manifest names baseNar as its base.
func checkDeltas(t *testing.T, s *chunkstore.Store, ni *nixcache.NarInfo, baseNar [32]byte) int {
	t.Helper()
	ctx := context.Background()
	m, raw, err := s.Manifest(ctx, ni.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	if !m.HasDeltas() || raw[len(manifest.Magic)] != manifest.VersionDelta {
		t.Fatalf("%s: manifest version %d without deltas, want version 2", ni.StorePath, raw[len(manifest.Magic)])
	}
	if m.BaseNarHash != baseNar {
		t.Fatalf("%s: base NAR %s, want %s", ni.StorePath, manifest.Key(m.BaseNarHash), manifest.Key(baseNar))
	}
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	n := 0
	for i, e := range m.Entries {
		bases, did, size, ok := m.DeltaOf(i)
		if !ok {
			continue
		}
		n++
		obj, err := s.Delta(ctx, did)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if len(obj) != int(size) || size >= e.StoredSize {
			t.Errorf("entry %d: delta of %d bytes, manifest says %d, full object %d", i, len(obj), size, e.StoredSize)
		}
		var dict []byte
		for _, b := range bases {
			bobj, err := s.Chunk(ctx, b.ID)
			if err != nil {
				t.Fatal(err)
			}
			if dict, err = codec.Open(dict, b.ID, bobj, int(b.Size)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := dc.OpenDelta(nil, e.ID, obj, dict, int(e.Size)); err != nil {
			t.Errorf("entry %d: %v", i, err)
		}
	}
	return n
}

func TestPublishDeltas(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(20, 300<<10)
	v1 := nextRelease(v0, 1, 3000)
	v2 := nextRelease(v1, 2, 2500)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "zstd")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", v1, "none")
	c := cache.Add(t, cachetest.HashPart("c"), "pkg-1.2pre1", v2, "none")
	other := cache.Add(t, cachetest.HashPart("o"), "other-1.1", nextRelease(v0, 9, 1000), "none")
	storeDir := t.TempDir()
	s, _ := chunkstore.Open(storeDir, nil)
	ctx := context.Background()

	// Given newest first, the run still publishes in version order, so each version
	// is the next one's base.
	sum, err := runWith(t, cache, storeDir, deltaOpts, c.HashPart(), other.HashPart(), b.HashPart(), a.HashPart())
	if err != nil {
		t.Fatal(err)
	}
	if sum.NARs != 4 || sum.WithBase != 2 || sum.Deltas == 0 || sum.DeltaSaved <= 0 {
		t.Fatalf("summary %+v", sum)
	}
	for _, ni := range []*nixcache.NarInfo{a, other} {
		m, raw, err := s.Manifest(ctx, ni.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		if m.HasDeltas() || raw[len(manifest.Magic)] != manifest.Version {
			t.Errorf("%s has no base but got a version %d manifest", ni.StorePath, raw[len(manifest.Magic)])
		}
	}
	mb, _, _ := s.Manifest(ctx, b.NarHash)
	if n := checkDeltas(t, s, b, a.NarHash); n < len(mb.Entries)/2 {
		t.Errorf("%d deltas for %d chunks of a small edit", n, len(mb.Entries))
	}
	checkDeltas(t, s, c, b.NarHash)
	if sum.DeltaBytes*10 > sum.NewBytes {
		t.Errorf("deltas take %d bytes, new chunks %d: a small edit should cost far less as deltas", sum.DeltaBytes, sum.NewBytes)
	}

	// A later run finds the base in the store.
	v3 := nextRelease(v2, 3, 4000)
	d := cache.Add(t, cachetest.HashPart("d"), "pkg-1.2", v3, "none")
	if sum, err = runWith(t, cache, storeDir, deltaOpts, d.HashPart()); err != nil || sum.WithBase != 1 {
		t.Fatalf("second run: %+v, %v", sum, err)
	}
	checkDeltas(t, s, d, c.NarHash)
}

func TestPublishDeltasRestart(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(21, 200<<10)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "none")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", nextRelease(v0, 1, 3000), "none")
	storeDir := t.TempDir()
	s, _ := chunkstore.Open(storeDir, nil)
	ctx := context.Background()
	if _, err := runWith(t, cache, storeDir, deltaOpts, a.HashPart(), b.HashPart()); err != nil {
		t.Fatal(err)
	}
	_, want, err := s.Manifest(ctx, b.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	deltaFiles := func() []string {
		files, _ := filepath.Glob(filepath.Join(storeDir, "deltas", "*", "*"))
		return files
	}
	files := deltaFiles()
	if len(files) < 4 {
		t.Fatalf("%d delta objects", len(files))
	}

	// What an interruption leaves: some deltas written, no manifest, no narinfo.
	for _, f := range files[:len(files)/2] {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{b.HashPart() + ".narinfo", chunkstore.ManifestKey(manifest.Key(b.NarHash))} {
		if err := os.Remove(filepath.Join(storeDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := runWith(t, cache, storeDir, deltaOpts, a.HashPart(), b.HashPart())
	if err != nil || sum.NARs != 1 || sum.Skipped != 1 || sum.NewChunks != 0 {
		t.Fatalf("rerun: %+v, %v", sum, err)
	}
	_, got, err := s.Manifest(ctx, b.NarHash)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the rerun's manifest differs from the uninterrupted run's (err %v)", err)
	}
	checkDeltas(t, s, b, a.NarHash)
	if n := len(deltaFiles()); n != len(files) {
		t.Errorf("%d delta objects after the rerun, %d before the interruption", n, len(files))
	}

	// With the manifest in place and only the narinfo missing, a rerun writes
	// nothing new: every delta object is found and refreshed.
	if err := os.Remove(filepath.Join(storeDir, b.HashPart()+".narinfo")); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, f := range deltaFiles() {
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]int64{}
	for _, f := range deltaFiles() {
		fi, _ := os.Stat(f)
		before[f] = fi.Size()
	}
	if sum, err = runWith(t, cache, storeDir, deltaOpts, b.HashPart()); err != nil || sum.NARs != 1 || sum.NewChunks != 0 || sum.Deltas != int64(len(before)) {
		t.Fatalf("rerun: %+v, %v", sum, err)
	}
	for _, f := range deltaFiles() {
		fi, err := os.Stat(f)
		if err != nil || before[f] != fi.Size() || fi.ModTime().Before(time.Now().Add(-time.Minute)) {
			t.Errorf("delta %s after a rerun: new, changed or not refreshed (%v)", filepath.Base(f), err)
		}
	}
}

func TestPublishWithoutDeltas(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(22, 100<<10)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "none")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", nextRelease(v0, 1, 3000), "none")
	storeDir := t.TempDir()
	sum, err := runWith(t, cache, storeDir, publish.Options{Jobs: 2}, a.HashPart(), b.HashPart())
	if err != nil || sum.Deltas != 0 || sum.WithBase != 0 {
		t.Fatalf("%+v, %v", sum, err)
	}
	s, _ := chunkstore.Open(storeDir, nil)
	if m, _, err := s.Manifest(context.Background(), b.NarHash); err != nil || m.HasDeltas() {
		t.Fatalf("deltas without Deltas (err %v)", err)
	}
}

// BenchmarkPublishDeltas publishes two versions of a package, the second a small edit
// of the first, with and without deltas in the same run, and reports both
// throughputs (MB/s of NAR) and their ratio: the publish cost of deltas.
func BenchmarkPublishDeltas(b *testing.B) {
	size := 16 << 20
	if testing.Short() {
		size = 1 << 20
	}
	v0 := testkit.RandomBytes(30, size)
	for i := 0; i < size; i += 8 << 10 {
		clear(v0[i : i+2<<10]) // compressible stretches, as in real NARs
	}
	v1 := nextRelease(v0, 1, 5000)
	cache := cachetest.New(b, "bench-1")
	hps := []string{
		cache.Add(b, cachetest.HashPart("a"), "pkg-1.0", v0, "zstd").HashPart(),
		cache.Add(b, cachetest.HashPart("b"), "pkg-1.1", v1, "zstd").HashPart(),
	}
	narBytes := float64(len(v0) + len(v1))
	var with, without time.Duration
	var sum publish.Summary
	for range b.N {
		for _, deltas := range []bool{false, true} {
			start := time.Now()
			s, err := runWith(b, cache, b.TempDir(), publish.Options{Params: chunk.DefaultParams(), Jobs: 2, Deltas: deltas}, hps...)
			if err != nil {
				b.Fatal(err)
			}
			if deltas {
				with += time.Since(start)
				sum = s
			} else {
				without += time.Since(start)
			}
		}
	}
	if sum.Deltas == 0 {
		b.Fatal("no deltas written")
	}
	b.ReportMetric(narBytes*float64(b.N)/without.Seconds()/1e6, "plain-MB/s")
	b.ReportMetric(narBytes*float64(b.N)/with.Seconds()/1e6, "deltas-MB/s")
	b.ReportMetric(without.Seconds()/with.Seconds(), "deltas/plain-speed")
	b.ReportMetric(float64(sum.DeltaBytes)/float64(sum.NewBytes), "delta/new-chunk-bytes")
}

func TestPublishDeltasBaseTrouble(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(23, 150<<10)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "none")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", nextRelease(v0, 1, 3000), "none")
	ctx := context.Background()

	t.Run("base fails in the same run", func(t *testing.T) {
		broken := cachetest.New(t, "test-1")
		bad := broken.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "none")
		good := broken.Add(t, cachetest.HashPart("b"), "pkg-1.1", nextRelease(v0, 1, 3000), "none")
		if err := os.WriteFile(filepath.Join(broken.Dir, bad.URL), testkit.RandomBytes(24, len(v0)), 0o644); err != nil {
			t.Fatal(err)
		}
		storeDir := t.TempDir()
		sum, err := runWith(t, broken, storeDir, deltaOpts, bad.HashPart(), good.HashPart())
		if !errors.Is(err, publish.ErrRefused) || sum.NARs != 1 || sum.Deltas != 0 {
			t.Fatalf("%+v, %v; want the base refused and the other published without deltas", sum, err)
		}
		s, _ := chunkstore.Open(storeDir, nil)
		if m, _, err := s.Manifest(ctx, good.NarHash); err != nil || m.HasDeltas() {
			t.Fatalf("manifest with deltas against a base that was not published (err %v)", err)
		}
	})

	t.Run("base chunk missing from the store", func(t *testing.T) {
		storeDir := t.TempDir()
		if _, err := runWith(t, cache, storeDir, deltaOpts, a.HashPart()); err != nil {
			t.Fatal(err)
		}
		s, _ := chunkstore.Open(storeDir, nil)
		ma, _, err := s.Manifest(ctx, a.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		lost := ma.Entries[len(ma.Entries)/2].ID
		if err := os.Remove(filepath.Join(storeDir, chunkstore.ChunkKey(lost))); err != nil {
			t.Fatal(err)
		}
		// The deltas that needed the lost chunk are skipped; the NAR is published.
		sum, err := runWith(t, cache, storeDir, deltaOpts, b.HashPart())
		if err != nil || sum.NARs != 1 || sum.Deltas == 0 {
			t.Fatalf("%+v, %v", sum, err)
		}
		mb, _, err := s.Manifest(ctx, b.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		for i := range mb.Entries {
			if bases, _, _, ok := mb.DeltaOf(i); ok {
				for _, bc := range bases {
					if bc.ID == lost {
						t.Fatalf("entry %d has a delta against the lost chunk", i)
					}
				}
			}
		}
		checkDeltas(t, s, b, a.NarHash)
	})
}
