package chain

import (
	"bytes"
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
)

const chunkSize = 20 << 10

// releases builds a store holding three releases of one package as a delta-primary
// publish would, by hand, so each form and each broken variant is under the test's
// control:
//
//	r1: six chunks, all full objects
//	r2: chunk 1 mutated, kept only as a delta against r1's chunks 0-2; chunk 2 in
//	    the base NAR (full there); chunk 4 mutated and kept full (a keyframe); the
//	    rest full references into r1's pack
//	r3: chunk 1 mutated again, a delta against r2's delta-only chunk 1 (depth 2);
//	    chunk 2 in the base NAR, where it is in the base NAR again (two hops); the
//	    rest as in r2
type releases struct {
	st       *chunkstore.Store
	m        []*manifest.Manifest // r1, r2, r3
	raw      [][][]byte           // per release, per entry
	mutilate func(kind chunkstore.ObjectKind, obj []byte) []byte
}

func mutate(b []byte, seed byte) []byte {
	out := bytes.Clone(b)
	for i := 100; i < len(out); i += 997 {
		out[i] ^= seed
	}
	return out
}

func build(t *testing.T, mutilate func(kind chunkstore.ObjectKind, obj []byte) []byte) *releases {
	t.Helper()
	ctx := context.Background()
	st, err := chunkstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	deltas := chunk.NewDeltaCodec(0, 1)
	defer deltas.Close()
	if mutilate == nil {
		mutilate = func(_ chunkstore.ObjectKind, obj []byte) []byte { return obj }
	}
	rs := &releases{st: st}
	r1 := make([][]byte, 6)
	for i := range r1 {
		r1[i] = testkit.RandomBytes(uint64(i+1), chunkSize)
	}
	r2 := [][]byte{r1[0], mutate(r1[1], 1), r1[2], r1[3], mutate(r1[4], 2), r1[5]}
	r3 := [][]byte{r1[0], mutate(r2[1], 3), r1[2], r1[3], r2[4], r1[5]}
	rs.raw = [][][]byte{r1, r2, r3}

	newManifest := func(raw [][]byte) *manifest.Manifest {
		m := &manifest.Manifest{Chunker: chunk.DefaultParams().Identity()}
		var nar []byte
		for _, c := range raw {
			m.Entries = append(m.Entries, manifest.Entry{ID: chunk.Sum(c), Size: uint32(len(c))})
			nar = append(nar, c...)
		}
		m.NarHash, m.NarSize = sha256.Sum256(nar), uint64(len(nar))
		m.Locs = make([]manifest.Loc, len(raw))
		return m
	}
	put := func(pb *chunkstore.PackBuilder) chunk.ID {
		data, x := pb.Seal()
		if err := st.PutPack(ctx, data, x); err != nil {
			t.Fatal(err)
		}
		return x.Pack
	}

	// r1: one pack of full objects.
	m1 := newManifest(r1)
	var pb chunkstore.PackBuilder
	for i, c := range r1 {
		obj := mutilate(chunkstore.KindChunk, codec.Encode(nil, c))
		m1.Entries[i].StoredSize = uint32(len(obj))
		m1.Locs[i] = manifest.Loc{Offset: pb.Add(chunkstore.KindChunk, m1.Entries[i].ID, obj)}
	}
	m1.Packs = []chunk.ID{put(&pb)}

	// deltaOnly stores entry i of m as a delta against base chunks of bm.
	deltaOnly := func(m, bm *manifest.Manifest, raw [][]byte, braw [][]byte, i int, bases []int, pb *chunkstore.PackBuilder, pack uint32) {
		var dict []byte
		var ids []chunk.ID
		var idx []uint32
		for _, b := range bases {
			dict = append(dict, braw[b]...)
			ids = append(ids, bm.Entries[b].ID)
			idx = append(idx, uint32(len(m.Bases)))
			m.Bases = append(m.Bases, manifest.BaseChunk{ID: bm.Entries[b].ID, Size: bm.Entries[b].Size})
		}
		obj, err := deltas.EncodeDelta(nil, raw[i], dict)
		if err != nil {
			t.Fatal(err)
		}
		obj = mutilate(chunkstore.KindDelta, obj)
		off := pb.Add(chunkstore.KindDelta, chunk.DeltaID(m.Entries[i].ID, ids), obj)
		m.Deltas[i] = manifest.Delta{Bases: idx, StoredSize: uint32(len(obj)), Loc: manifest.Loc{Pack: pack, Offset: off}}
	}

	// r2: its own pack holds the delta of chunk 1 and the keyframe of chunk 4.
	m2 := newManifest(r2)
	m2.BaseNarHash = m1.NarHash
	m2.Deltas = make([]manifest.Delta, 6)
	pb = chunkstore.PackBuilder{}
	deltaOnly(m2, m1, r2, r1, 1, []int{0, 1, 2}, &pb, 1)
	obj := codec.Encode(nil, r2[4])
	m2.Entries[4].StoredSize = uint32(len(obj))
	m2.Locs[4] = manifest.Loc{Pack: 1, Offset: pb.Add(chunkstore.KindChunk, m2.Entries[4].ID, obj)}
	for _, i := range []int{0, 3, 5} {
		m2.Entries[i].StoredSize, m2.Locs[i] = m1.Entries[i].StoredSize, m1.Locs[i]
	}
	m2.Packs = []chunk.ID{m1.Packs[0], put(&pb)}

	// r3: the delta of chunk 1 against r2's (delta-only) chunk 1.
	m3 := newManifest(r3)
	m3.BaseNarHash = m2.NarHash
	m3.Deltas = make([]manifest.Delta, 6)
	pb = chunkstore.PackBuilder{}
	deltaOnly(m3, m2, r3, r2, 1, []int{1}, &pb, 2)
	for _, i := range []int{0, 3, 5} {
		m3.Entries[i].StoredSize, m3.Locs[i] = m1.Entries[i].StoredSize, m1.Locs[i]
	}
	m3.Entries[4].StoredSize, m3.Locs[4] = m2.Entries[4].StoredSize, manifest.Loc{Pack: 1, Offset: m2.Locs[4].Offset}
	m3.Packs = []chunk.ID{m1.Packs[0], m2.Packs[1], put(&pb)}

	for _, m := range []*manifest.Manifest{m1, m2, m3} {
		if err := st.PutManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	rs.m = []*manifest.Manifest{m1, m2, m3}
	return rs
}

func newResolver(t *testing.T, st *chunkstore.Store, opts Options) *Resolver {
	t.Helper()
	pr, err := chunkstore.NewPackReader(st, chunkstore.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pr.Close)
	return New(st, pr, opts)
}

func TestForms(t *testing.T) {
	rs := build(t, nil)
	want := [][]manifest.Form{
		{manifest.Full, manifest.Full, manifest.Full, manifest.Full, manifest.Full, manifest.Full},
		{manifest.Full, manifest.DeltaOnly, manifest.InBase, manifest.Full, manifest.Full, manifest.Full},
		{manifest.Full, manifest.DeltaOnly, manifest.InBase, manifest.Full, manifest.Full, manifest.Full},
	}
	for r, m := range rs.m {
		for i := range m.Entries {
			if m.Form(i) != want[r][i] {
				t.Errorf("release %d entry %d: %v, want %v", r+1, i, m.Form(i), want[r][i])
			}
		}
	}
	if rs.m[2].Version() != manifest.VersionChained || rs.m[0].Version() != manifest.VersionPacked {
		t.Fatalf("versions %d, %d", rs.m[0].Version(), rs.m[2].Version())
	}
}

// all lists every entry of m.
func all(m *manifest.Manifest) []int {
	idx := make([]int, len(m.Entries))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

func TestEntriesRebuildEveryRelease(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"defaults", Options{}},
		{"no cache, one chunk a window", Options{CacheBytes: -1, Window: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs := build(t, nil)
			r := newResolver(t, rs.st, tt.opts)
			var st Stats
			for rel := len(rs.m) - 1; rel >= 0; rel-- {
				m := rs.m[rel]
				n := 0
				got, err := r.Entries(context.Background(), m, all(m), func(i int, obj, raw []byte) error {
					if m.Form(i) == manifest.Full && len(obj) != int(m.Entries[i].StoredSize) {
						t.Fatalf("release %d entry %d (%v): object of %d bytes", rel+1, i, m.Form(i), len(obj))
					}
					if i != n {
						t.Fatalf("release %d: entry %d handed out as %d", rel+1, n, i)
					}
					n++
					if !bytes.Equal(raw, rs.raw[rel][i]) {
						t.Fatalf("release %d entry %d: wrong bytes", rel+1, i)
					}
					return nil
				})
				if err != nil || n != len(m.Entries) {
					t.Fatalf("release %d: %d entries, %v", rel+1, n, err)
				}
				st.Manifests += got.Manifests
				st.Decoded += got.Decoded
			}
			if st.Decoded < 2 || st.Manifests < 2 {
				t.Fatalf("stats %+v: want both deltas decoded and both base manifests read", st)
			}
		})
	}
}

func TestChunkAndCost(t *testing.T) {
	rs := build(t, nil)
	r := newResolver(t, rs.st, Options{})
	ctx := context.Background()
	m1, m2, m3 := rs.m[0], rs.m[1], rs.m[2]
	tests := []struct {
		name string
		m    *manifest.Manifest
		i    int
		cost uint64
	}{
		{"full", m3, 0, uint64(m1.Entries[0].StoredSize)},
		{"two hops in base", m3, 2, uint64(m1.Entries[2].StoredSize)},
		// r3's chunk 1 needs its delta, r2's delta and r1's chunks 0-2.
		{"depth 2", m3, 1, uint64(m3.Deltas[1].StoredSize+m2.Deltas[1].StoredSize) +
			uint64(m1.Entries[0].StoredSize+m1.Entries[1].StoredSize+m1.Entries[2].StoredSize)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cost, err := r.Cost(ctx, tt.m, []int{tt.i})
			if err != nil || cost != tt.cost {
				t.Fatalf("Cost = %d, %v; want %d", cost, err, tt.cost)
			}
		})
	}
	raw, err := r.Chunk(ctx, m3, 1)
	if err != nil || !bytes.Equal(raw, rs.raw[2][1]) {
		t.Fatalf("Chunk: %v", err)
	}
	// Now every chunk of that chain is hot: nothing left to fetch.
	if cost, err := r.Cost(ctx, m3, []int{1}); err != nil || cost != 0 {
		t.Fatalf("Cost after Chunk = %d, %v; want 0", cost, err)
	}
	local := newResolver(t, rs.st, Options{Local: func(id chunk.ID) ([]byte, bool) {
		if id == m2.Entries[1].ID {
			return rs.raw[1][1], true
		}
		return nil, false
	}})
	if cost, err := local.Cost(ctx, m3, []int{1}); err != nil || cost != uint64(m3.Deltas[1].StoredSize) {
		t.Fatalf("Cost with the base local = %d, %v; want the delta's %d", cost, err, m3.Deltas[1].StoredSize)
	}
}

// TestBrokenChains: whatever is wrong with a chain, the reader says so and never
// hands out bytes that are not the chunk.
func TestBrokenChains(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		mutilate func(kind chunkstore.ObjectKind, obj []byte) []byte
		edit     func(t *testing.T, rs *releases) *manifest.Manifest // the manifest to read
		opts     Options
		only     int // when not 0, read only this entry
		want     string
	}{
		{
			name: "base manifest missing",
			edit: func(t *testing.T, rs *releases) *manifest.Manifest {
				if err := rs.st.Backend().Delete(ctx, chunkstore.ManifestKey(manifest.Key(rs.m[1].NarHash))); err != nil {
					t.Fatal(err)
				}
				return rs.m[2]
			},
			want: "base manifest",
		},
		{
			name: "corrupt delta",
			mutilate: func(kind chunkstore.ObjectKind, obj []byte) []byte {
				if kind == chunkstore.KindDelta {
					obj = bytes.Clone(obj)
					obj[len(obj)-5] ^= 0xff
				}
				return obj
			},
			edit: func(_ *testing.T, rs *releases) *manifest.Manifest { return rs.m[2] },
			want: "delta",
		},
		{
			name: "corrupt base chunk",
			mutilate: func(kind chunkstore.ObjectKind, obj []byte) []byte {
				if kind == chunkstore.KindChunk {
					obj = bytes.Clone(obj)
					obj[len(obj)-5] ^= 0xff
				}
				return obj
			},
			edit: func(_ *testing.T, rs *releases) *manifest.Manifest { return rs.m[2] },
			want: "chunk",
		},
		{
			name: "chain deeper than allowed",
			edit: func(_ *testing.T, rs *releases) *manifest.Manifest { return rs.m[2] },
			opts: Options{MaxDepth: 1},
			want: "chain past 1",
		},
		{
			name: "base NAR lacks the chunk",
			edit: func(t *testing.T, rs *releases) *manifest.Manifest {
				m := rs.m[2]
				m.BaseNarHash = rs.m[0].NarHash // r1 has no r2 chunk 1
				return m
			},
			want: "has no chunk",
		},
		{
			name: "a cycle of base NARs",
			edit: func(t *testing.T, rs *releases) *manifest.Manifest {
				// r2' says its base is r3', and r3' that its base is r2'; chunk 2 is
				// in the base NAR in both.
				a, b := *rs.m[1], *rs.m[2]
				a.NarHash, b.NarHash = [32]byte{1}, [32]byte{2}
				a.BaseNarHash, b.BaseNarHash = b.NarHash, a.NarHash
				for _, m := range []*manifest.Manifest{&a, &b} {
					// Hand-made: the NarHash is not the NAR's, which PutManifest does not check.
					if err := rs.st.PutManifest(ctx, m); err != nil {
						t.Fatal(err)
					}
				}
				return &b
			},
			only: 2,
			want: "chain past",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := build(t, tt.mutilate)
			m := tt.edit(t, rs)
			r := newResolver(t, rs.st, tt.opts)
			check := func(i int, _, raw []byte) error {
				if chunk.Sum(raw) != m.Entries[i].ID {
					t.Fatalf("entry %d: bytes that are not the chunk", i)
				}
				return nil
			}
			var err error
			if tt.only != 0 {
				var raw []byte
				if raw, err = r.Chunk(ctx, m, tt.only); err == nil {
					err = check(tt.only, nil, raw)
				}
			} else {
				_, err = r.Entries(ctx, m, all(m), check)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Entries = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}
