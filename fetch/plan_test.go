package fetch

import (
	"slices"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

func TestPriceNar(t *testing.T) {
	id := func(n byte) chunk.ID { return chunk.Sum([]byte{n}) }
	// Four entries (the last repeats the first) and two base chunks; entry 0 has a
	// delta against base 0, entry 1 against both bases, entry 2 a delta larger than
	// its full object.
	m := &manifest.Manifest{
		Entries: []manifest.Entry{
			{ID: id(1), Size: 1000, StoredSize: 500},
			{ID: id(2), Size: 1000, StoredSize: 600},
			{ID: id(3), Size: 1000, StoredSize: 100},
			{ID: id(1), Size: 1000, StoredSize: 500},
		},
		Bases: []manifest.BaseChunk{{ID: id(10), Size: 1000}, {ID: id(11), Size: 1000}},
		Deltas: []manifest.Delta{
			{Bases: []uint32{0}, StoredSize: 50},
			{Bases: []uint32{0, 1}, StoredSize: 40},
			{Bases: []uint32{1}, StoredSize: 200},
			{Bases: []uint32{0}, StoredSize: 50},
		},
	}
	plain := &manifest.Manifest{Entries: m.Entries}
	none := []bool{false, false, false, false}
	tests := []struct {
		name             string
		m                *manifest.Manifest
		have, held, base []bool
		want             narPrice
	}{
		{name: "v1 manifest, nothing local", m: plain, have: none, held: none,
			want: narPrice{Missing: 3, Download: 3, Bytes: 1200, useDelta: none}},
		{name: "no base local", m: m, have: none, held: none, base: []bool{false, false},
			want: narPrice{Missing: 3, Download: 3, Bytes: 1200, useDelta: none}},
		{name: "all bases local", m: m, have: none, held: none, base: []bool{true, true},
			want: narPrice{Missing: 3, Download: 3, Bytes: 50 + 40 + 100, Deltas: 2, DeltaBytes: 90, FullBytes: 1100,
				useDelta: []bool{true, true, false, true}}},
		{name: "one base local", m: m, have: none, held: none, base: []bool{true, false},
			want: narPrice{Missing: 3, Download: 3, Bytes: 50 + 600 + 100, Deltas: 1, DeltaBytes: 50, FullBytes: 500,
				useDelta: []bool{true, false, false, true}}},
		{name: "entries cached or held cost nothing", m: m, have: []bool{true, false, false, true}, held: []bool{false, true, false, false}, base: []bool{true, true},
			want: narPrice{Missing: 2, Download: 1, Bytes: 100, useDelta: none}},
		{name: "everything cached", m: m, have: []bool{true, true, true, true}, held: none, base: []bool{true, true},
			want: narPrice{useDelta: none}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := tc.base
			if base == nil {
				base = make([]bool, len(tc.m.Bases))
			}
			got := priceNar(tc.m, tc.have, tc.held, base)
			if got.Missing != tc.want.Missing || got.Download != tc.want.Download || got.Bytes != tc.want.Bytes || got.Deltas != tc.want.Deltas ||
				got.DeltaBytes != tc.want.DeltaBytes || got.FullBytes != tc.want.FullBytes || !slices.Equal(got.useDelta, tc.want.useDelta) {
				t.Errorf("priceNar = %+v\nwant        %+v", got, tc.want)
			}
		})
	}
}

func TestBaseCacheBoundsBytes(t *testing.T) {
	c := baseCache{}
	chunkOf := func(n byte, size int) (chunk.ID, []byte) {
		b := make([]byte, size)
		b[0] = n
		return chunk.Sum(b), b
	}
	size := baseCacheBytes / 4
	var ids []chunk.ID
	for n := range byte(6) {
		id, raw := chunkOf(n, size)
		c.put(id, raw)
		ids = append(ids, id)
	}
	for i, id := range ids {
		raw, ok := c.get(id)
		if want := i >= 2; ok != want {
			t.Errorf("chunk %d cached = %v, want %v (the oldest go first)", i, ok, want)
		}
		if ok && (len(raw) != size || raw[0] != byte(i)) {
			t.Errorf("chunk %d: cached bytes differ", i)
		}
	}
	if c.size() > baseCacheBytes {
		t.Errorf("cache holds %d bytes, bound %d", c.size(), baseCacheBytes)
	}
	big, raw := chunkOf(9, baseCacheBytes+1)
	c.put(big, raw)
	if _, ok := c.get(big); ok {
		t.Error("a chunk larger than the whole cache was kept")
	}
}

func TestChooseWhole(t *testing.T) {
	tests := []struct {
		name                    string
		missingBytes, wholeSize uint64
		covered, want           bool
	}{
		{"chunks cheaper", 100, 1000, false, false},
		{"whole cheaper", 1001, 1000, false, true},
		{"equal: chunks, which the next version reuses", 1000, 1000, false, false},
		{"whole cheaper but peers hold every chunk", 5000, 1000, true, false},
		{"no upstream serves the whole NAR", 5000, 0, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := chooseWhole(tc.missingBytes, tc.wholeSize, tc.covered); got != tc.want {
				t.Errorf("chooseWhole(%d, %d, %v) = %v, want %v", tc.missingBytes, tc.wholeSize, tc.covered, got, tc.want)
			}
		})
	}
}

func TestFirstInstall(t *testing.T) {
	tests := []struct {
		kind                      Kind
		knownPackage, haveLocal   bool
		wantSkipRemoteManifestAsk bool
	}{
		{Remote, false, false, true},
		{Remote, true, false, false},
		{Remote, false, true, false},
		{Peer, false, false, false},
		{Local, false, false, false},
	}
	for _, tc := range tests {
		if got := firstInstall(tc.kind, tc.knownPackage, tc.haveLocal); got != tc.wantSkipRemoteManifestAsk {
			t.Errorf("firstInstall(%v, known %v, local manifest %v) = %v", tc.kind, tc.knownPackage, tc.haveLocal, got)
		}
	}
}

// kindOnly is a Source that only has a name and a kind, for ordering.
type kindOnly struct {
	Source
	name string
	kind Kind
}

func (k kindOnly) Name() string { return k.name }
func (k kindOnly) Kind() Kind   { return k.kind }

// TestManifestOrder: manifests are asked of local sources, then the chunk store, then
// peers, whatever order chunks are asked in.
func TestManifestOrder(t *testing.T) {
	in := []Source{kindOnly{name: "cache", kind: Local}, kindOnly{name: "nixstore", kind: Local},
		kindOnly{name: "peers", kind: Peer}, kindOnly{name: "store", kind: Remote}, kindOnly{name: "mirror", kind: Remote}}
	var got []string
	for _, s := range manifestOrder(in) {
		got = append(got, s.Name())
	}
	want := []string{"cache", "nixstore", "store", "mirror", "peers"}
	if !slices.Equal(got, want) {
		t.Errorf("manifest order %v, want %v", got, want)
	}
}
