package publish_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// chainReader rebuilds entries of a delta-primary store's manifests the slow, plain
// way (every base manifest read again, nothing cached), to check what publish wrote
// independently of how it decided it.
type chainReader struct {
	t     *testing.T
	s     *chunkstore.Store
	codec *chunk.Codec
	dc    *chunk.DeltaCodec
}

func newChainReader(t *testing.T, s *chunkstore.Store) *chainReader {
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	dc := chunk.NewDeltaCodec(0, 1)
	t.Cleanup(func() { codec.Close(); dc.Close() })
	return &chainReader{t: t, s: s, codec: codec, dc: dc}
}

func (c *chainReader) manifest(h [32]byte) *manifest.Manifest {
	c.t.Helper()
	m, raw, err := c.s.Manifest(context.Background(), h)
	if err != nil {
		c.t.Fatal(err)
	}
	want := byte(manifest.VersionPacked)
	if m.Chained() {
		want = manifest.VersionChained
	}
	if raw[len(manifest.Magic)] != want {
		c.t.Fatalf("manifest %s: version %d, want %d", manifest.Key(h), raw[len(manifest.Magic)], want)
	}
	return m
}

// find is the first entry of m with chunk id.
func (c *chainReader) find(m *manifest.Manifest, id chunk.ID) int {
	c.t.Helper()
	for i, e := range m.Entries {
		if e.ID == id {
			return i
		}
	}
	c.t.Fatalf("manifest %s has no chunk %s", manifest.Key(m.NarHash), id)
	return -1
}

// entry rebuilds entry i of m and returns its bytes and depth.
func (c *chainReader) entry(m *manifest.Manifest, i int) ([]byte, int) {
	c.t.Helper()
	ctx := context.Background()
	e := m.Entries[i]
	switch m.Form(i) {
	case manifest.Full:
		l := m.Locs[i]
		obj, err := c.s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize)
		if err != nil {
			c.t.Fatal(err)
		}
		raw, err := c.codec.Open(nil, e.ID, obj, int(e.Size))
		if err != nil {
			c.t.Fatalf("manifest %s entry %d: %v", manifest.Key(m.NarHash), i, err)
		}
		return raw, 0
	case manifest.InBase:
		bm := c.manifest(m.BaseNarHash)
		raw, d := c.entry(bm, c.find(bm, e.ID))
		return raw, d + 1
	}
	bm := c.manifest(m.BaseNarHash)
	bases, _, size, _ := m.DeltaOf(i)
	var dict []byte
	depth := 0
	for _, b := range bases {
		raw, d := c.entry(bm, c.find(bm, b.ID))
		dict = append(dict, raw...)
		depth = max(depth, d)
	}
	l := m.Deltas[i].Loc
	obj, err := c.s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, size)
	if err != nil {
		c.t.Fatal(err)
	}
	raw, err := c.dc.OpenDelta(nil, e.ID, obj, dict, int(e.Size))
	if err != nil {
		c.t.Fatalf("manifest %s entry %d: delta: %v", manifest.Key(m.NarHash), i, err)
	}
	return raw, depth + 1
}

// nar rebuilds the NAR of ni, checks it against NarHash, and returns its manifest,
// the depth of each entry and how many entries have each form.
func (c *chainReader) nar(ni *nixcache.NarInfo) (*manifest.Manifest, []int, map[manifest.Form]int) {
	c.t.Helper()
	m := c.manifest(ni.NarHash)
	h := sha256.New()
	depths := make([]int, len(m.Entries))
	forms := map[manifest.Form]int{}
	for i := range m.Entries {
		raw, d := c.entry(m, i)
		h.Write(raw)
		depths[i] = d
		forms[m.Form(i)]++
	}
	if [32]byte(h.Sum(nil)) != ni.NarHash {
		c.t.Fatalf("%s: the rebuilt chunks make another NAR", ni.StorePath)
	}
	return m, depths, forms
}

// packBytes is the size of a store's pack files.
func packBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(filepath.Join(dir, "packs"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".pack") {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// releases adds n consecutive releases of one package to the cache, oldest first.
func releases(t *testing.T, cache *cachetest.Cache, n int) []*nixcache.NarInfo {
	v := testkit.RandomBytes(70, 200<<10)
	var out []*nixcache.NarInfo
	for i := range n {
		if i > 0 {
			v = nextRelease(v, byte(i), 2500+300*i)
		}
		out = append(out, cache.Add(t, cachetest.HashPart(fmt.Sprintf("r%d", i)), fmt.Sprintf("pkg-1.%d", i), v, "none"))
	}
	return out
}

func TestPublishDeltaPrimary(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	nis := releases(t, cache, 5)
	const maxChain = 2
	opts := publish.Options{Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, DeltaPrimary: true, MaxChain: maxChain, MinReuseRun: -1}

	plainDir := t.TempDir()
	var all []string
	for _, ni := range nis {
		all = append(all, ni.HashPart())
	}
	if _, err := runWith(t, cache, plainDir, publish.Options{Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, MinReuseRun: -1}, all...); err != nil {
		t.Fatal(err)
	}
	plain := packBytes(t, plainDir)

	perRelease := [][]string{all[:1], all[1:2], all[2:3], all[3:4], all[4:]}
	for _, tc := range []struct {
		name  string
		runs  [][]string // hash parts per run
		shard publish.Shard
	}{
		{"one run", [][]string{all}, publish.Shard{}},
		{"a run per release", perRelease, publish.Shard{}},
		// A sharded worker reads no pack index: the chains come from the manifests alone.
		{"a sharded run per release", perRelease, publish.Shard{Index: 0, Count: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := chunkstore.Open(dir, nil)
			opts := opts
			opts.Shard = tc.shard
			var sum publish.Summary
			for _, hps := range tc.runs {
				got, err := runWith(t, cache, dir, opts, hps...)
				if err != nil {
					t.Fatal(err)
				}
				sum.NARs += got.NARs
				sum.DeltaOnly += got.DeltaOnly
				sum.InBase += got.InBase
				sum.Keyframes += got.Keyframes
				sum.ChainCapped += got.ChainCapped
			}
			if sum.NARs != len(nis) || sum.DeltaOnly == 0 || sum.Keyframes == 0 || sum.ChainCapped == 0 {
				t.Fatalf("summary %+v", sum)
			}
			meta, err := s.Meta(context.Background())
			if err != nil || !meta.DeltaPrimary || meta.MaxChain != maxChain {
				t.Fatalf("store metadata %+v, %v", meta, err)
			}

			cr := newChainReader(t, s)
			deepest := 0
			capped := false // a release after the first with new keyframes
			var first *manifest.Manifest
			for k, ni := range nis {
				m, depths, forms := cr.nar(ni)
				for i, d := range depths {
					if d > maxChain {
						t.Fatalf("%s entry %d: depth %d, bound %d", ni.StorePath, i, d, maxChain)
					}
					deepest = max(deepest, d)
				}
				if k == 0 {
					first = m
					if m.Chained() || forms[manifest.Full] != len(m.Entries) {
						t.Fatalf("the first release without a base is not all keyframes: %v", forms)
					}
					continue
				}
				if m.BaseNarHash != nis[k-1].NarHash {
					t.Fatalf("%s: base %s, want the previous release", ni.StorePath, manifest.Key(m.BaseNarHash))
				}
				inFirst := map[chunk.ID]bool{}
				for _, e := range first.Entries {
					inFirst[e.ID] = true
				}
				for i, e := range m.Entries {
					if m.Form(i) == manifest.Full && !inFirst[e.ID] && k >= maxChain+1 {
						capped = true
					}
				}
				t.Logf("%s: %v, version %d", ni.StorePath, forms, m.Version())
			}
			if deepest != maxChain || !capped {
				t.Fatalf("deepest entry %d, keyframes after the first release: %v; want chains to reach the bound and keyframes to follow", deepest, capped)
			}
			got := packBytes(t, dir)
			t.Logf("packs: %d bytes delta-primary, %d plain", got, plain)
			if got >= plain*3/4 {
				t.Fatalf("delta-primary packs %d bytes, plain %d", got, plain)
			}

			// Publishing again writes nothing; so does finishing a run interrupted
			// before the newest NAR's manifest and narinfo, which come out the same.
			if got, err := runWith(t, cache, dir, opts, all...); err != nil || got.Skipped != len(nis) || got.Packs != 0 {
				t.Fatalf("rerun: %+v, %v", got, err)
			}
			if tc.shard.Sharded() {
				return // without an index, a rerun writes the deltas it does not find again
			}
			last := nis[len(nis)-1]
			mkey := filepath.Join(dir, chunkstore.ManifestKey(manifest.Key(last.NarHash)))
			before, err := os.ReadFile(mkey)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{mkey, filepath.Join(dir, last.HashPart()+".narinfo")} {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := runWith(t, cache, dir, opts, last.HashPart()); err != nil || got.NARs != 1 || got.Packs != 0 {
				t.Fatalf("rerun after an interruption: %+v, %v", got, err)
			}
			if after, err := os.ReadFile(mkey); err != nil || !bytes.Equal(before, after) {
				t.Fatalf("the manifest published again differs (%v)", err)
			}
		})
	}
	t.Logf("plain store: %d bytes of packs", plain)
}

// TestPublishDeltaPrimaryBrokenChain: a base whose own chain cannot be followed (its
// base's manifest gone, or unreadable) costs keyframes, never the publish, and the new
// NAR reads back, building at most on the base's own full objects.
func TestPublishDeltaPrimaryBrokenChain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(path string) error
	}{
		{"missing", os.Remove},
		{"unreadable", func(path string) error { return os.WriteFile(path, []byte("SHOALMAN garbage"), 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := cachetest.New(t, "test-1")
			nis := releases(t, cache, 3)
			opts := publish.Options{Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, DeltaPrimary: true, MaxChain: 4}
			dir := t.TempDir()
			s, _ := chunkstore.Open(dir, nil)
			for _, ni := range nis[:2] {
				if _, err := runWith(t, cache, dir, opts, ni.HashPart()); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.breakIt(filepath.Join(dir, chunkstore.ManifestKey(manifest.Key(nis[0].NarHash)))); err != nil {
				t.Fatal(err)
			}
			sum, err := runWith(t, cache, dir, opts, nis[2].HashPart())
			if err != nil || sum.NARs != 1 || sum.ChainCapped == 0 {
				t.Fatalf("publish on a broken chain: %+v, %v", sum, err)
			}
			_, depths, forms := newChainReader(t, s).nar(nis[2])
			t.Logf("%s: %v", nis[2].StorePath, forms)
			for i, d := range depths {
				if d > 1 {
					t.Fatalf("entry %d: depth %d through a base whose chain is broken", i, d)
				}
			}
		})
	}
}
