package publish_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// smallParams keep test NARs small while still cutting many chunks.
var smallParams = chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}

func run(t *testing.T, cache *cachetest.Cache, storeDir string, keys []string, hashParts ...string) (publish.Summary, error) {
	t.Helper()
	src, err := blob.Open(cache.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := chunkstore.Open(storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := nixcache.ParseKeyring(keys)
	if err != nil {
		t.Fatal(err)
	}
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: smallParams, Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	return p.Run(context.Background(), hashParts)
}

func TestPublish(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	base := testkit.RandomBytes(1, 200<<10)
	next := append(append(append([]byte{}, base[:100<<10]...), []byte("a change in the middle")...), base[100<<10:]...)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1", base, "zstd")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-2", next, "none")
	storeDir := t.TempDir()

	sum, err := run(t, cache, storeDir, []string{cache.PublicKey}, a.HashPart(), b.HashPart())
	if err != nil {
		t.Fatal(err)
	}
	if sum.NARs != 2 || sum.NarBytes != int64(len(base)+len(next)) {
		t.Fatalf("summary %+v", sum)
	}
	if sum.NewChunks >= sum.Chunks {
		t.Errorf("no chunk shared between versions: %d new of %d", sum.NewChunks, sum.Chunks)
	}

	s, _ := chunkstore.Open(storeDir, nil)
	ctx := context.Background()
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	for _, tc := range []struct {
		ni  *nixcache.NarInfo
		nar []byte
	}{{a, base}, {b, next}} {
		raw, err := s.NarInfo(ctx, tc.ni.HashPart())
		if err != nil || !bytes.Equal(raw, tc.ni.Raw) {
			t.Fatalf("narinfo in the store differs from the upstream's (err %v)", err)
		}
		m, _, err := s.Manifest(ctx, tc.ni.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		if m.Chunker != smallParams.Identity() {
			t.Errorf("manifest chunker %q", m.Chunker)
		}
		var got []byte
		for _, e := range m.Entries {
			obj, err := s.Chunk(ctx, e.ID)
			if err != nil {
				t.Fatal(err)
			}
			if len(obj) != int(e.StoredSize) {
				t.Errorf("chunk %s stored size %d, manifest says %d", e.ID, len(obj), e.StoredSize)
			}
			got, err = codec.Open(got, e.ID, obj, int(e.Size))
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, tc.nar) {
			t.Error("chunks do not reassemble the NAR")
		}
	}
	meta, err := s.Meta(ctx)
	if err != nil || meta.Chunker != smallParams.Identity() {
		t.Fatalf("meta %+v, %v", meta, err)
	}

	// A rerun finds everything in place.
	sum, err = run(t, cache, storeDir, []string{cache.PublicKey}, a.HashPart(), b.HashPart())
	if err != nil || sum.Skipped != 2 || sum.NARs != 0 {
		t.Fatalf("rerun: %+v, %v", sum, err)
	}
	// An interrupted publish (narinfo not yet written) is finished by a rerun.
	if err := os.Remove(filepath.Join(storeDir, b.HashPart()+".narinfo")); err != nil {
		t.Fatal(err)
	}
	sum, err = run(t, cache, storeDir, []string{cache.PublicKey}, a.HashPart(), b.HashPart())
	if err != nil || sum.NARs != 1 || sum.NewChunks != 0 {
		t.Fatalf("rerun after interruption: %+v, %v", sum, err)
	}
}

func TestPublishRefuses(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	good := cache.Add(t, cachetest.HashPart("good"), "good", testkit.RandomBytes(2, 50<<10), "none")
	lying := cache.Add(t, cachetest.HashPart("lying"), "lying", testkit.RandomBytes(3, 50<<10), "none")
	// The NAR file no longer matches its signed narinfo.
	narFile := filepath.Join(cache.Dir, lying.URL)
	if err := os.WriteFile(narFile, testkit.RandomBytes(4, 50<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	other := cachetest.New(t, "other-1")
	storeDir := t.TempDir()

	tests := []struct {
		name      string
		keys      []string
		paths     []string
		published int
	}{
		{"untrusted key", []string{other.PublicKey}, []string{good.HashPart()}, 0},
		{"missing path", []string{cache.PublicKey}, []string{cachetest.HashPart("absent"), good.HashPart()}, 1},
		{"NAR does not match narinfo", []string{cache.PublicKey}, []string{lying.HashPart()}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sum, err := run(t, cache, storeDir, tc.keys, tc.paths...)
			if !errors.Is(err, publish.ErrRefused) {
				t.Fatalf("err = %v, want ErrRefused", err)
			}
			if sum.NARs != tc.published {
				t.Errorf("published %d, want %d", sum.NARs, tc.published)
			}
		})
	}
	s, _ := chunkstore.Open(storeDir, nil)
	if _, err := s.NarInfo(context.Background(), lying.HashPart()); !errors.Is(err, shoal.ErrNotFound) {
		t.Errorf("narinfo of a NAR that failed verification was written: %v", err)
	}
	if ok, _ := s.HasManifest(context.Background(), lying.NarHash); ok {
		t.Error("manifest of a NAR that failed verification was written")
	}
}

func TestStoreRefusesOtherChunker(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	ni := cache.Add(t, cachetest.HashPart("x"), "x", testkit.RandomBytes(5, 10<<10), "none")
	storeDir := t.TempDir()
	if _, err := run(t, cache, storeDir, []string{cache.PublicKey}, ni.HashPart()); err != nil {
		t.Fatal(err)
	}
	s, _ := chunkstore.Open(storeDir, nil)
	if _, err := s.Init(context.Background(), "file://"+cache.Dir, chunk.DefaultParams(), chunkstore.Mode{}, time.Now()); err == nil {
		t.Fatal("store accepted a second chunker")
	}
}

// BenchmarkPublish reports publish throughput in MB/s of NAR, and its ratio to the
// in-process work it cannot avoid (cut, hash, compress), measured in the same run.
func BenchmarkPublish(b *testing.B) {
	const size = 32 << 20
	nar := testkit.RandomBytes(9, size)
	for i := 0; i < size; i += 8 << 10 {
		clear(nar[i : i+4<<10]) // compressible stretches, as in real NARs
	}
	cache := cachetest.New(b, "bench-1")
	ni := cache.Add(b, cachetest.HashPart("bench"), "bench", nar, "zstd")
	kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
	src, _ := blob.Open(cache.Dir, nil)

	var publishTime time.Duration
	b.SetBytes(size)
	for range b.N {
		dst, _ := chunkstore.Open(b.TempDir(), nil)
		p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: chunk.DefaultParams(), Jobs: 1})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := p.Run(context.Background(), []string{ni.HashPart()}); err != nil {
			b.Fatal(err)
		}
		publishTime += time.Since(start)
		p.Close()
	}
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	var limit time.Duration
	for range b.N {
		start := time.Now()
		var obj []byte
		_, err := manifest.Build(context.Background(), bytes.NewReader(nar), chunk.DefaultParams(), func(_ chunk.ID, raw []byte) (int, error) {
			obj = codec.Encode(obj[:0], raw)
			return len(obj), nil
		})
		if err != nil {
			b.Fatal(err)
		}
		limit += time.Since(start)
	}
	b.ReportMetric(float64(size)*float64(b.N)/publishTime.Seconds()/1e6, "publish-MB/s")
	b.ReportMetric(float64(size)*float64(b.N)/limit.Seconds()/1e6, "cut+hash+compress-MB/s")
	b.ReportMetric(limit.Seconds()/publishTime.Seconds(), "publish/limit")
}

// The NAR URL index lets `shoal serve` answer the URLs the original narinfos name; a
// rerun of publish writes the entries a store published before the index lacks.
func TestPublishIndexesNarURLs(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1", testkit.RandomBytes(3, 50<<10), "zstd")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-2", testkit.RandomBytes(4, 50<<10), "none")
	storeDir := t.TempDir()
	if _, err := run(t, cache, storeDir, []string{cache.PublicKey}, a.HashPart(), b.HashPart()); err != nil {
		t.Fatal(err)
	}
	s, _ := chunkstore.Open(storeDir, nil)
	ctx := context.Background()
	for _, ni := range []*nixcache.NarInfo{a, b} {
		hp, err := s.NarURL(ctx, ni.URL)
		if err != nil || hp != ni.HashPart() {
			t.Fatalf("index of %s: %q, %v; want %s", ni.URL, hp, err, ni.HashPart())
		}
	}
	// A store from before the index: the entry is gone, the narinfo is there.
	key, _ := chunkstore.NarURLKey(a.URL)
	if err := s.Backend().Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NarURL(ctx, a.URL); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("deleted index entry still answers: %v", err)
	}
	sum, err := run(t, cache, storeDir, []string{cache.PublicKey}, a.HashPart(), b.HashPart())
	if err != nil || sum.Skipped != 2 {
		t.Fatalf("rerun: %+v, %v", sum, err)
	}
	if hp, err := s.NarURL(ctx, a.URL); err != nil || hp != a.HashPart() {
		t.Fatalf("rerun did not restore the index of %s: %q, %v", a.URL, hp, err)
	}
}
