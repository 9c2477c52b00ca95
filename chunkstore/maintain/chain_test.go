package maintain

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/publish"
)

// chainOf returns the manifest of NAR h and those of its chain of bases, as far as
// entries are stored there, failing the test when one is missing.
func chainOf(t *testing.T, s *chunkstore.Store, h [32]byte) []*manifest.Manifest {
	t.Helper()
	var out []*manifest.Manifest
	for {
		m, _, err := s.Manifest(context.Background(), h)
		if err != nil {
			t.Fatalf("chain of %s: %v", manifest.Key(h), err)
		}
		out = append(out, m)
		if !m.Chained() || len(out) > 64 {
			return out
		}
		h = m.BaseNarHash
	}
}

// readChained reads the NAR of manifest chain[0] the plain way: every chunk object
// and delta object from the pack range its manifest names, entries stored in the
// base rebuilt from the next manifest of the chain; the NAR must hash to its NarHash.
func readChained(t *testing.T, s *chunkstore.Store, chain []*manifest.Manifest) {
	t.Helper()
	ctx := context.Background()
	codec, _ := chunk.NewCodec()
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	var entry func(k int, id chunk.ID) ([]byte, error)
	entry = func(k int, id chunk.ID) ([]byte, error) {
		if k >= len(chain) {
			return nil, fmt.Errorf("chunk %s: past the end of the chain", id)
		}
		m := chain[k]
		i := slices.IndexFunc(m.Entries, func(e manifest.Entry) bool { return e.ID == id })
		if i < 0 {
			return nil, fmt.Errorf("manifest %s lacks chunk %s", manifest.Key(m.NarHash), id)
		}
		e := m.Entries[i]
		switch m.Form(i) {
		case manifest.Full:
			l := m.Locs[i]
			obj, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize)
			if err != nil {
				return nil, err
			}
			return codec.Open(nil, id, obj, int(e.Size))
		case manifest.InBase:
			return entry(k+1, id)
		}
		bases, _, size, _ := m.DeltaOf(i)
		var dict []byte
		for _, b := range bases {
			raw, err := entry(k+1, b.ID)
			if err != nil {
				return nil, err
			}
			dict = append(dict, raw...)
		}
		l := m.Deltas[i].Loc
		obj, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, size)
		if err != nil {
			return nil, err
		}
		return dc.OpenDelta(nil, id, obj, dict, int(e.Size))
	}
	h := sha256.New()
	for _, e := range chain[0].Entries {
		raw, err := entry(0, e.ID)
		if err != nil {
			t.Fatalf("NAR %s: %v", manifest.Key(chain[0].NarHash), err)
		}
		h.Write(raw)
	}
	if [32]byte(h.Sum(nil)) != chain[0].NarHash {
		t.Fatalf("NAR %s: the chain rebuilds another NAR", manifest.Key(chain[0].NarHash))
	}
}

// readLocations reads every object m locates, chunk and delta, from its pack range.
func readLocations(t *testing.T, s *chunkstore.Store, m *manifest.Manifest) {
	t.Helper()
	ctx := context.Background()
	for i, e := range m.Entries {
		if e.StoredSize > 0 {
			l := m.Locs[i]
			if _, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize); err != nil {
				t.Fatalf("manifest %s entry %d: %v", manifest.Key(m.NarHash), i, err)
			}
		}
		if _, _, size, ok := m.DeltaOf(i); ok {
			l := m.Deltas[i].Loc
			if _, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, size); err != nil {
				t.Fatalf("manifest %s delta of entry %d: %v", manifest.Key(m.NarHash), i, err)
			}
		}
	}
}

// TestCollectKeepsChains: in a delta-primary store, a kept NAR keeps the manifests of
// its chain of bases (and every object they locate) even when their narinfos are
// dropped; a manifest no kept NAR needs goes, in a delta-primary store as in a plain
// packed one, where deltas only speed up an upgrade.
func TestCollectKeepsChains(t *testing.T) {
	dpOpts := packedOpts
	dpOpts.DeltaPrimary, dpOpts.MaxChain = true, 8
	for _, tc := range []struct {
		name      string
		opts      publish.Options
		keep      []int // releases whose narinfos are kept (the other package is always)
		manifests []int // releases whose manifests remain
	}{
		{"delta-primary, two oldest dropped", dpOpts, []int{2, 3}, []int{0, 1, 2, 3}},
		{"delta-primary, newest dropped", dpOpts, []int{0, 1, 2}, []int{0, 1, 2}},
		{"delta-primary, all dropped", dpOpts, nil, nil},
		{"plain packed, two oldest dropped", packedOpts, []int{2, 3}, []int{2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, t.TempDir())
			// Distinct releases (f.releases's edits cancel out after three).
			var hps []string
			bin := testkit.RandomBytes(300, 150<<10)
			for v := range 4 {
				bin = release(bin, byte(1<<v), 8<<10)
				hps = append(hps, f.add(t, fmt.Sprintf("pkg-%d", v), bin))
			}
			other := f.add(t, "other-1", testkit.RandomBytes(400, 50<<10))
			for _, hp := range append(slices.Clone(hps), other) {
				f.publishWith(t, tc.opts, hp)
			}
			newest := f.nis[hps[3]].NarHash
			if chain := chainOf(t, f.store, newest); tc.opts.DeltaPrimary != (len(chain) == 4) {
				t.Fatalf("the newest release has a chain of %d manifests", len(chain))
			}
			keep := []string{other}
			for _, v := range tc.keep {
				keep = append(keep, hps[v])
			}
			waitOlder(0)
			// Twice: the first run repacks (and rewrites manifests of the chains), the
			// second deletes what the first repacked.
			for run := range 2 {
				rep, err := Collect(ctx, f.store, Options{Keep: func(hp string) bool { return slices.Contains(keep, hp) }})
				if err != nil {
					t.Fatal(err)
				}
				if run == 0 && rep.NarInfos.Deleted != int64(len(hps)-len(tc.keep)) {
					t.Fatalf("%d narinfos deleted, want %d", rep.NarInfos.Deleted, len(hps)-len(tc.keep))
				}
				t.Logf("gc %d: manifests %+v, packs %+v", run, rep.Manifests, rep.Packs)
				waitOlder(0)
			}
			for v, hp := range hps {
				_, _, err := f.store.Manifest(ctx, f.nis[hp].NarHash)
				if want := slices.Contains(tc.manifests, v); want != (err == nil) || (!want && !errors.Is(err, shoal.ErrNotFound)) {
					t.Errorf("release %d: manifest read: %v; want it kept: %v", v, err, want)
				}
				if _, err := f.store.NarInfo(ctx, hp); (err == nil) != slices.Contains(tc.keep, v) {
					t.Errorf("release %d: narinfo read: %v", v, err)
				}
			}
			for _, hp := range keep {
				chain := chainOf(t, f.store, f.nis[hp].NarHash)
				for _, m := range chain {
					readLocations(t, f.store, m)
				}
				readChained(t, f.store, chain)
			}
			f.verify(t)
		})
	}
}
