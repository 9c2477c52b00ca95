package publish_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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

// packedObjects reads every pack index of a store: where each object lies.
func packedObjects(t *testing.T, s *chunkstore.Store) map[chunk.ID]chunkstore.PackObject {
	t.Helper()
	ctx := context.Background()
	objs := map[chunk.ID]chunkstore.PackObject{}
	packOf := map[chunk.ID]chunk.ID{}
	err := s.PackIndexes(ctx, func(id chunk.ID) error {
		x, err := s.PackIndex(ctx, id)
		if err != nil {
			return err
		}
		for _, o := range x.Objects {
			objs[o.ID] = o
			packOf[o.ID] = id
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// checkPacked reads the NAR of ni back from a packed store the way a client does,
// through its version 3 manifest's locations only: every chunk object decodes to its
// ID, the chunks make up the NAR, and every delta rebuilds its chunk from the base
// chunks (found through the base NAR's manifest). It returns the manifest.
func checkPacked(t *testing.T, s *chunkstore.Store, ni *nixcache.NarInfo) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	m, raw, err := s.Manifest(ctx, ni.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	if raw[len(manifest.Magic)] != manifest.VersionPacked {
		t.Fatalf("%s: manifest version %d, want %d", ni.StorePath, raw[len(manifest.Magic)], manifest.VersionPacked)
	}
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	read := func(m *manifest.Manifest, i int) []byte {
		l, e := m.Locs[i], m.Entries[i]
		obj, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		b, err := codec.Open(nil, e.ID, obj, int(e.Size))
		if err != nil {
			t.Fatalf("entry %d at %d in pack %d: %v", i, l.Offset, l.Pack, err)
		}
		return b
	}
	h := sha256.New()
	for i := range m.Entries {
		h.Write(read(m, i))
	}
	if [32]byte(h.Sum(nil)) != ni.NarHash {
		t.Fatalf("%s: the chunks at the manifest's locations make another NAR", ni.StorePath)
	}
	if !m.HasDeltas() {
		return m
	}
	bm, _, err := s.Manifest(ctx, m.BaseNarHash)
	if err != nil {
		t.Fatal(err)
	}
	baseAt := map[chunk.ID]int{}
	for i, e := range bm.Entries {
		baseAt[e.ID] = i
	}
	for i, e := range m.Entries {
		bases, _, size, ok := m.DeltaOf(i)
		if !ok {
			continue
		}
		var dict []byte
		for _, b := range bases {
			dict = append(dict, read(bm, baseAt[b.ID])...)
		}
		l := m.Deltas[i].Loc
		obj, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, size)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dc.OpenDelta(nil, e.ID, obj, dict, int(e.Size)); err != nil {
			t.Errorf("entry %d: delta at %d in pack %d: %v", i, l.Offset, l.Pack, err)
		}
	}
	return m
}

func TestPublishPacked(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(30, 300<<10)
	v1 := nextRelease(v0, 1, 3000)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "zstd")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", v1, "none")
	var small []*nixcache.NarInfo
	for i := range 5 {
		small = append(small, cache.Add(t, cachetest.HashPart("s"+string(rune('0'+i))), "small-"+string(rune('0'+i)), testkit.RandomBytes(uint64(40+i), 3000), "none"))
	}
	storeDir := t.TempDir()
	s, _ := chunkstore.Open(storeDir, nil)
	opts := publish.Options{Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, PackSize: 100 << 10}
	hps := []string{b.HashPart(), a.HashPart()}
	for _, ni := range small {
		hps = append(hps, ni.HashPart())
	}
	sum, err := runWith(t, cache, storeDir, opts, hps...)
	if err != nil {
		t.Fatal(err)
	}
	if sum.NARs != 7 || sum.WithBase != 1 || sum.Deltas == 0 || sum.Packs < 3 {
		t.Fatalf("summary %+v", sum)
	}
	meta, err := s.Meta(context.Background())
	if err != nil || !meta.Packed() {
		t.Fatalf("store metadata %+v, %v: want a packed store", meta, err)
	}
	for _, dir := range []string{"chunks", "deltas"} {
		if _, err := os.Stat(filepath.Join(storeDir, dir)); !os.IsNotExist(err) {
			t.Errorf("a packed store has %s/ (%v)", dir, err)
		}
	}
	objs := packedObjects(t, s)
	if int64(len(objs)) != sum.NewChunks+sum.Deltas {
		t.Errorf("%d objects in packs, %d new chunks and %d deltas published", len(objs), sum.NewChunks, sum.Deltas)
	}
	for _, ni := range append([]*nixcache.NarInfo{a, b}, small...) {
		checkPacked(t, s, ni)
	}

	// One NAR's new chunk objects lie back to back in NAR order, and its delta
	// objects follow in NAR order.
	ma := checkPacked(t, s, a)
	for i := 1; i < len(ma.Entries); i++ {
		prev, cur := ma.Locs[i-1], ma.Locs[i]
		if cur.Pack == prev.Pack && cur.Offset != prev.Offset+uint64(ma.Entries[i-1].StoredSize) {
			t.Fatalf("entry %d of %s at %d, not right after entry %d", i, a.StorePath, cur.Offset, i-1)
		}
	}
	mb := checkPacked(t, s, b)
	var last *manifest.Loc
	for i := range mb.Entries {
		if _, _, _, ok := mb.DeltaOf(i); !ok {
			continue
		}
		l := mb.Deltas[i].Loc
		if last != nil && l.Pack == last.Pack && l.Offset <= last.Offset {
			t.Fatalf("delta of entry %d lies before the previous delta", i)
		}
		last = &l
	}

	// A rerun with nothing new writes nothing; one that lost a manifest and narinfo
	// (an interrupted run) finds every object in the packs and writes no pack.
	if sum, err = runWith(t, cache, storeDir, opts, hps...); err != nil || sum.Skipped != 7 || sum.Packs != 0 {
		t.Fatalf("rerun: %+v, %v", sum, err)
	}
	for _, f := range []string{b.HashPart() + ".narinfo", chunkstore.ManifestKey(manifest.Key(b.NarHash))} {
		if err := os.Remove(filepath.Join(storeDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	// Short runs of b's chunks shared with a may be written again; nothing else is.
	if sum, err = runWith(t, cache, storeDir, opts, hps...); err != nil || sum.NARs != 1 || sum.NewChunks != 0 || (sum.Packs != 0 && sum.Rewritten == 0) || sum.Deltas == 0 {
		t.Fatalf("rerun after an interruption: %+v, %v", sum, err)
	}
	checkPacked(t, s, b)

	// A later run finds its base in the store and reads its chunks from the packs.
	v2 := nextRelease(v1, 2, 2500)
	c := cache.Add(t, cachetest.HashPart("c"), "pkg-1.2", v2, "none")
	if sum, err = runWith(t, cache, storeDir, publish.Options{Jobs: 2, Deltas: true}, c.HashPart()); err != nil || sum.WithBase != 1 || sum.Packs == 0 {
		t.Fatalf("later run: %+v, %v", sum, err)
	}
	if m := checkPacked(t, s, c); m.BaseNarHash != b.NarHash {
		t.Fatalf("base %s, want %s", manifest.Key(m.BaseNarHash), manifest.Key(b.NarHash))
	}
}

func TestPublishRefusesAnotherLayout(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", testkit.RandomBytes(50, 20<<10), "none")
	storeDir := t.TempDir()
	if _, err := runWith(t, cache, storeDir, publish.Options{Jobs: 1}, a.HashPart()); err != nil {
		t.Fatal(err)
	}
	_, err := runWith(t, cache, storeDir, publish.Options{Jobs: 1, Layout: chunkstore.FormatPacked}, a.HashPart())
	if err == nil || !strings.Contains(err.Error(), "has layout 1, not 3") {
		t.Fatalf("packed publish to a loose store: %v", err)
	}
}

// TestPublishPackedRewritesShortRuns: a NAR that shares chunks with an older one in
// runs shorter than MinReuseRun gets its own copies of them, beside its new chunks, so
// a client reads it from few places; with reuse of every run, it points into the older
// NAR's packs.
func TestPublishPackedRewritesShortRuns(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(60, 400<<10)
	// A change every 40 KiB: shared runs of a few 4 KiB chunks between new ones.
	v1 := nextRelease(v0, 5, 40<<10)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "none")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", v1, "none")
	for _, tc := range []struct {
		name        string
		minRun      int
		wantShared  bool // some of b's entries lie in a's packs
		wantRewrite bool
	}{
		{"reuse every run", -1, true, false},
		{"rewrite runs under 1 GiB", 1 << 30, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storeDir := t.TempDir()
			s, _ := chunkstore.Open(storeDir, nil)
			opts := publish.Options{Jobs: 1, Layout: chunkstore.FormatPacked, MinReuseRun: tc.minRun}
			if _, err := runWith(t, cache, storeDir, opts, a.HashPart()); err != nil {
				t.Fatal(err)
			}
			sum, err := runWith(t, cache, storeDir, opts, b.HashPart())
			if err != nil {
				t.Fatal(err)
			}
			if (sum.Rewritten > 0) != tc.wantRewrite || sum.NewChunks == 0 {
				t.Fatalf("summary %+v", sum)
			}
			ma, mb := checkPacked(t, s, a), checkPacked(t, s, b)
			aPacks := map[chunk.ID]bool{}
			for _, id := range ma.Packs {
				aPacks[id] = true
			}
			shared := false
			for _, id := range mb.Packs {
				shared = shared || aPacks[id]
			}
			if shared != tc.wantShared {
				t.Fatalf("b's manifest points into a's packs: %v, want %v", shared, tc.wantShared)
			}
		})
	}
}

// goneOnTouch is a store whose packs are collected the moment a publish refreshes
// them, as when gc deletes a pack after the run read its index.
type goneOnTouch struct{ blob.Backend }

func (g goneOnTouch) Touch(ctx context.Context, key string) error {
	if _, ok := chunkstore.ParsePackKey(key); ok {
		return fmt.Errorf("touching %s: %w", key, shoal.ErrNotFound)
	}
	return g.Backend.Touch(ctx, key)
}

// TestPublishPackedAgainstGC: a NAR whose manifest would point into a pack that is
// gone by the time the manifest is written is refused, never published pointing
// nowhere; and a pack gc has repacked is not pointed into by a new publish.
func TestPublishPackedAgainstGC(t *testing.T) {
	ctx := context.Background()
	cache := cachetest.New(t, "test-1")
	nar := testkit.RandomBytes(90, 200<<10)
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", nar, "none")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-copy-1.0", nar, "none")
	c := cache.Add(t, cachetest.HashPart("c"), "pkg-copy2-1.0", nar, "none")
	storeDir := t.TempDir()
	opts := publish.Options{Jobs: 1, Params: smallParams, Layout: chunkstore.FormatPacked}
	if _, err := runWith(t, cache, storeDir, opts, a.HashPart()); err != nil {
		t.Fatal(err)
	}
	ma := checkPacked(t, chunkstore.New(mustOpen(t, storeDir)), a)

	src, _ := blob.Open(cache.Dir, nil)
	kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
	st := chunkstore.New(goneOnTouch{mustOpen(t, storeDir)})
	p, err := publish.New(nixcache.NewBinaryCache(src), st, kr, opts)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.Run(ctx, []string{b.HashPart()})
	p.Close()
	if !errors.Is(err, publish.ErrRefused) || sum.Refused != 1 {
		t.Fatalf("publish reusing a collected pack: %+v, %v", sum, err)
	}
	// b is a's NAR under another path: the manifest is a's, the narinfo must not be.
	if _, err := st.NarInfo(ctx, b.HashPart()); !errors.Is(err, shoal.ErrNotFound) {
		t.Fatalf("narinfo of a NAR whose pack was collected: %v", err)
	}
	if m := checkPacked(t, st, a); !slices.Equal(m.Packs, ma.Packs) {
		t.Fatal("the manifest was rewritten to point into a collected pack")
	}

	// gc repacked a's pack: a new publish writes the objects again rather than
	// pointing at them (here into a pack of the same bytes, so of the same name).
	if err := st.Backend().Put(ctx, chunkstore.RepackedKey(ma.Packs[0]), []byte("x\n")); err != nil {
		t.Fatal(err)
	}
	sum, err = runWith(t, cache, storeDir, opts, c.HashPart())
	if err != nil || sum.NewChunks != sum.Chunks || sum.Packs != 1 {
		t.Fatalf("publish beside a repacked pack: %+v, %v; want every chunk written again", sum, err)
	}
	checkPacked(t, st, c)
}

func mustOpen(t *testing.T, u string) blob.Backend {
	t.Helper()
	b, err := blob.Open(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
