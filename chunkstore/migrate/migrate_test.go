package migrate_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/maintain"
	"github.com/shoal-nix/shoal/chunkstore/migrate"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/s3test"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

var smallParams = chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}

// release returns base with a byte changed every stride bytes and a string inserted:
// the next version of a package.
func release(base []byte, seed byte, stride int) []byte {
	out := append([]byte(nil), base...)
	for i := stride / 2; i < len(out); i += stride {
		out[i] ^= seed
	}
	mid := len(out) / 3
	return append(out[:mid:mid], append([]byte(fmt.Sprintf("release %d", seed)), out[mid:]...)...)
}

// publishLoose publishes a layout 1 store with deltas: three versions of one package
// and a few small ones.
func publishLoose(t *testing.T, storeDir string) []*nixcache.NarInfo {
	t.Helper()
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(1, 200<<10)
	v1 := release(v0, 1, 20<<10)
	v2 := release(v1, 2, 20<<10)
	nars := []*nixcache.NarInfo{
		cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "zstd"),
		cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", v1, "none"),
		cache.Add(t, cachetest.HashPart("c"), "pkg-1.2", v2, "none"),
	}
	for i := range 5 {
		nars = append(nars, cache.Add(t, cachetest.HashPart(fmt.Sprint("s", i)), fmt.Sprintf("small%d-1.0", i), append(testkit.RandomBytes(uint64(10+i), 30<<10), v0[:20<<10]...), "none"))
	}
	src, _ := blob.Open(cache.Dir, nil)
	dst, _ := chunkstore.Open(storeDir, nil)
	kr, err := nixcache.ParseKeyring([]string{cache.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	p, err := publish.New(nixcache.NewBinaryCache(src), dst, kr, publish.Options{Params: smallParams, Jobs: 2, Deltas: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var hps []string
	for _, ni := range nars {
		hps = append(hps, ni.HashPart())
	}
	sum, err := p.Run(context.Background(), hps)
	if err != nil || sum.WithBase != 2 {
		t.Fatalf("publish: %+v, %v", sum, err)
	}
	return nars
}

// readBack reads the NAR of ni the way a client does, whatever its manifest's version:
// a version 3 manifest by location, an older one by object name; every delta is
// rebuilt against its base chunks. It returns the manifest's version.
func readBack(s *chunkstore.Store, ni *nixcache.NarInfo) (byte, error) {
	ctx := context.Background()
	m, raw, err := s.Manifest(ctx, ni.NarHash)
	if err != nil {
		return 0, err
	}
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	chunkOf := func(m *manifest.Manifest, i int) ([]byte, error) {
		e := m.Entries[i]
		var obj []byte
		var err error
		if m.Packed() {
			l := m.Locs[i]
			obj, err = s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize)
		} else {
			obj, err = s.Chunk(ctx, e.ID)
		}
		if err != nil {
			return nil, err
		}
		return codec.Open(nil, e.ID, obj, int(e.Size))
	}
	h := sha256.New()
	for i := range m.Entries {
		b, err := chunkOf(m, i)
		if err != nil {
			return 0, fmt.Errorf("%s entry %d: %w", ni.StorePath, i, err)
		}
		h.Write(b)
	}
	if [32]byte(h.Sum(nil)) != ni.NarHash {
		return 0, fmt.Errorf("%s: the chunks make another NAR", ni.StorePath)
	}
	if m.HasDeltas() {
		bm, _, err := s.Manifest(ctx, m.BaseNarHash)
		if err != nil {
			return 0, err
		}
		at := map[chunk.ID]int{}
		for i, e := range bm.Entries {
			at[e.ID] = i
		}
		for i, e := range m.Entries {
			bases, id, size, ok := m.DeltaOf(i)
			if !ok {
				continue
			}
			var dict []byte
			for _, b := range bases {
				raw, err := chunkOf(bm, at[b.ID])
				if err != nil {
					return 0, err
				}
				dict = append(dict, raw...)
			}
			var obj []byte
			if m.Packed() {
				l := m.Deltas[i].Loc
				obj, err = s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, size)
			} else {
				obj, err = s.Delta(ctx, id)
			}
			if err != nil {
				return 0, fmt.Errorf("%s delta %d: %w", ni.StorePath, i, err)
			}
			if _, err := dc.OpenDelta(nil, e.ID, obj, dict, int(e.Size)); err != nil {
				return 0, fmt.Errorf("%s delta %d: %w", ni.StorePath, i, err)
			}
		}
	}
	return raw[len(manifest.Magic)], nil
}

// cancelAfter is a log handler that cancels a context once n NARs are migrated.
type cancelAfter struct {
	slog.Handler
	n      *atomic.Int64
	cancel context.CancelFunc
}

func (c cancelAfter) Enabled(context.Context, slog.Level) bool { return true }

func (c cancelAfter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "migrated" && c.n.Add(-1) == 0 {
		c.cancel()
	}
	return nil
}

// TestMigrate: a layout 1 store with deltas is migrated, interrupted after two
// NARs and resumed. Every NAR reads back at every step (half the store by location,
// half by name, then all by location), clients read it while the migration runs, the
// store switches to layout 3 only at the end, verify finds nothing wrong, and
// --finish deletes the loose objects, after which every NAR still reads back.
func TestMigrate(t *testing.T) {
	t.Run("directory", func(t *testing.T) { testMigrate(t, t.TempDir()) })
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Start(t)
		testMigrate(t, srv.URL(srv.Bucket(t, "store"), "v1"))
	})
}

func testMigrate(t *testing.T, url string) {
	nars := publishLoose(t, url)
	s, _ := chunkstore.Open(url, nil)
	ctx := context.Background()
	readAll := func(when string) map[byte]int {
		t.Helper()
		versions := map[byte]int{}
		for _, ni := range nars {
			v, err := readBack(s, ni)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			versions[v]++
		}
		return versions
	}
	readAll("before")
	opts := migrate.Options{PackSize: 64 << 10}

	// Interrupted after two NARs.
	cctx, cancel := context.WithCancel(ctx)
	var left atomic.Int64
	left.Store(2)
	opts.Logger = slog.New(cancelAfter{Handler: slog.DiscardHandler, n: &left, cancel: cancel})
	rep, err := migrate.Run(cctx, s, opts)
	cancel()
	if !errors.Is(err, context.Canceled) || rep.Migrated < 2 || rep.Switched {
		t.Fatalf("interrupted run: %+v, %v", rep, err)
	}
	if v := readAll("interrupted"); v[manifest.VersionPacked] < 2 || v[manifest.VersionPacked]+1 >= len(nars) {
		t.Fatalf("after the interruption, manifest versions %v: want some migrated and some not", v)
	}
	if meta, err := s.Meta(ctx); err != nil || meta.Packed() {
		t.Fatalf("switched before every manifest was migrated: %+v, %v", meta, err)
	}

	// Resumed, with a client reading throughout.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, ni := range nars {
				if _, err := readBack(s, ni); err != nil && readErr == nil {
					readErr = err
				}
			}
		}
	}()
	opts.Logger = nil
	rep, err = migrate.Run(ctx, s, opts)
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Fatalf("a client reading during the migration: %v", readErr)
	}
	if err != nil || !rep.Switched || rep.Migrated == 0 || rep.Failed != 0 {
		t.Fatalf("resumed run: %+v, %v", rep, err)
	}
	if v := readAll("after"); v[manifest.VersionPacked] != len(nars) {
		t.Fatalf("after the migration, manifest versions %v", v)
	}
	if meta, err := s.Meta(ctx); err != nil || !meta.Packed() {
		t.Fatalf("not switched: %+v, %v", meta, err)
	}
	verify := func(when string) {
		t.Helper()
		vr, problems, err := maintain.Verify(ctx, s, maintain.VerifyOptions{})
		if err != nil || problems != 0 || vr.Packs == 0 || vr.Deltas == 0 {
			t.Fatalf("verify %s: %+v, %d problems, %v", when, vr, problems, err)
		}
	}
	verify("after the migration")

	// Again: nothing to do.
	if rep, err = migrate.Run(ctx, s, opts); err != nil || rep.Migrated != 0 || rep.Packs != 0 {
		t.Fatalf("run on a migrated store: %+v, %v", rep, err)
	}

	// Finish: not before the grace period, then the loose objects go.
	opts.Finish, opts.Grace = true, time.Hour
	if rep, err = migrate.Run(ctx, s, opts); !errors.Is(err, migrate.ErrNotDone) || rep.LooseDeleted != 0 {
		t.Fatalf("finish within the grace period: %+v, %v", rep, err)
	}
	opts.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if rep, err = migrate.Run(ctx, s, opts); err != nil || rep.LooseDeleted == 0 {
		t.Fatalf("finish: %+v, %v", rep, err)
	}
	inv, err := s.Inventory(ctx)
	if err != nil || len(inv.Chunks)+len(inv.Deltas) != 0 || len(inv.Packs) == 0 {
		t.Fatalf("after finish: %d loose chunks, %d loose deltas, %d packs (%v)", len(inv.Chunks), len(inv.Deltas), len(inv.Packs), err)
	}
	readAll("after finish")
	verify("after finish")
}

// TestMigrateLeavesBrokenNARs: a manifest whose chunk object is gone stays as it is,
// the others are migrated, and the store does not switch.
func TestMigrateLeavesBrokenNARs(t *testing.T) {
	dir := t.TempDir()
	nars := publishLoose(t, dir)
	s, _ := chunkstore.Open(dir, nil)
	ctx := context.Background()
	m, _, err := s.Manifest(ctx, nars[3].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, chunkstore.ChunkKey(m.Entries[0].ID))); err != nil {
		t.Fatal(err)
	}
	rep, err := migrate.Run(ctx, s, migrate.Options{})
	if !errors.Is(err, migrate.ErrNotDone) || rep.Failed != 1 || rep.Switched || rep.Migrated != len(nars)-1 {
		t.Fatalf("%+v, %v", rep, err)
	}
	if meta, err := s.Meta(ctx); err != nil || meta.Packed() {
		t.Fatalf("switched with a manifest left: %+v, %v", meta, err)
	}
}
