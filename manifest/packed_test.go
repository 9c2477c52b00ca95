package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/zeebo/blake3"
)

// packedSample locates the objects of m in packs: chunk objects of three entries
// per pack back to back, and delta objects in a pack of their own, as publish lays
// them out. Zero stored sizes (which sample makes for entry 0) become 1.
func packedSample(m *Manifest) *Manifest {
	m.Locs = make([]Loc, len(m.Entries))
	var off uint64
	for i := range m.Entries {
		if m.Entries[i].StoredSize == 0 {
			m.Entries[i].StoredSize = 1
		}
		if i%3 == 0 {
			m.Packs = append(m.Packs, chunk.Sum([]byte(fmt.Sprint("pack", i))))
			off = 0
		}
		m.Locs[i] = Loc{Pack: uint32(len(m.Packs) - 1), Offset: off}
		off += uint64(m.Entries[i].StoredSize % (1 << 20))
	}
	if m.HasDeltas() {
		m.Packs = append(m.Packs, chunk.Sum([]byte("delta pack")))
		off = 0
		for i := range m.Deltas {
			if len(m.Deltas[i].Bases) > 0 {
				m.Deltas[i].Loc = Loc{Pack: uint32(len(m.Packs) - 1), Offset: off}
				off += uint64(m.Deltas[i].StoredSize)
			}
		}
	}
	return m
}

func TestPackedRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 7, 300} {
		for _, deltas := range []bool{false, true} {
			t.Run(fmt.Sprintf("n=%d/deltas=%v", n, deltas), func(t *testing.T) {
				m := packedSample(sample(n))
				if deltas {
					m = packedSample(deltaSample(n))
				}
				b := mustMarshal(t, m)
				if b[len(Magic)] != VersionPacked {
					t.Fatalf("version %d, want %d", b[len(Magic)], VersionPacked)
				}
				got, err := Parse(b)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(got) != fmt.Sprint(m) {
					t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, m)
				}
				if !got.Packed() || got.Version() != VersionPacked {
					t.Fatalf("parsed manifest: Packed %v, Version %d", got.Packed(), got.Version())
				}
			})
		}
	}
}

// TestPackedEncodingLayout pins the bytes of a small version 3 manifest, as
// docs/format.md describes them.
func TestPackedEncodingLayout(t *testing.T) {
	m := &Manifest{Chunker: small.Identity(), NarSize: 300, NarHash: [32]byte{0: 0xaa, 31: 0xbb}}
	m.Entries = []Entry{{ID: chunk.ID{0: 1}, Size: 200, StoredSize: 5}, {ID: chunk.ID{31: 2}, Size: 100, StoredSize: 128}}
	m.BaseNarHash = [32]byte{0: 0xcc}
	m.Bases = []BaseChunk{{ID: chunk.ID{0: 9}, Size: 70}}
	m.Deltas = []Delta{{}, {Bases: []uint32{0}, StoredSize: 3, Loc: Loc{Pack: 0, Offset: 200}}}
	m.Packs = []chunk.ID{{0: 0xd0}, {0: 0xd1}}
	m.Locs = []Loc{{Pack: 1, Offset: 0}, {Pack: 0, Offset: 72}}
	var want []byte
	want = append(want, "SHOALMAN"...)
	want = append(want, 3)
	want = append(want, m.NarHash[:]...)
	want = append(want, 0xac, 0x02) // 300
	want = append(want, byte(len(small.Identity())))
	want = append(want, small.Identity()...)
	want = append(want, m.BaseNarHash[:]...)
	want = append(want, 1)
	want = append(want, m.Bases[0].ID[:]...)
	want = append(want, 70)
	want = append(want, 2) // packs
	want = append(want, m.Packs[0][:]...)
	want = append(want, m.Packs[1][:]...)
	want = append(want, 2) // entries
	want = append(want, m.Entries[0].ID[:]...)
	want = append(want, 0xc8, 0x01, 0x05) // 200, 5
	want = append(want, 1, 0)             // pack 1, offset 0
	want = append(want, 0)                // no delta
	want = append(want, m.Entries[1].ID[:]...)
	want = append(want, 0x64, 0x80, 0x01) // 100, 128
	want = append(want, 0, 72)            // pack 0, offset 72
	want = append(want, 1, 0, 3, 0, 0xc8, 0x01)
	sum := blake3.Sum256(want)
	want = append(want, sum[:]...)
	if got := mustMarshal(t, m); !bytes.Equal(got, want) {
		t.Fatalf("encoding\n got %x\nwant %x", got, want)
	}
}

func TestPackedParseRejectsEveryTruncationAndFlip(t *testing.T) {
	b := mustMarshal(t, packedSample(deltaSample(5)))
	for n := range len(b) {
		if _, err := Parse(b[:n]); err == nil {
			t.Fatalf("Parse accepted %d of %d bytes", n, len(b))
		}
	}
	for i := range b {
		bad := bytes.Clone(b)
		bad[i] ^= 0x01
		if _, err := Parse(bad); err == nil {
			t.Fatalf("Parse accepted byte %d ^ 1", i)
		}
	}
}

func TestValidateLocs(t *testing.T) {
	tests := []struct {
		name string
		edit func(m *Manifest)
		want string // empty: valid
	}{
		{"valid", func(*Manifest) {}, ""},
		{"locations without packs", func(m *Manifest) { m.Packs = nil }, "without packs"},
		{"packs without locations", func(m *Manifest) { m.Locs = nil }, "locations for"},
		{"short location table", func(m *Manifest) { m.Locs = m.Locs[:2] }, "locations for"},
		{"pack out of range", func(m *Manifest) { m.Locs[1].Pack = 99 }, "in pack 99"},
		{"delta pack out of range", func(m *Manifest) { m.Deltas[0].Loc.Pack = 99 }, "in pack 99"},
		{"unused pack", func(m *Manifest) { m.Packs = append(m.Packs, chunk.ID{1}) }, "used by no location"},
		{"pack listed twice", func(m *Manifest) { m.Packs[1] = m.Packs[0] }, "listed twice"},
		{"past the largest pack", func(m *Manifest) { m.Locs[0].Offset = MaxPackSize }, "ends past"},
		{"offset overflowing", func(m *Manifest) { m.Locs[0].Offset = 1<<64 - 2 }, "ends past"},
		{"location without a chunk object", func(m *Manifest) { m.Entries[3].StoredSize = 0 }, "location without a chunk object"},
		{"delta-only", func(m *Manifest) { m.Entries[2].StoredSize, m.Locs[2] = 0, Loc{} }, ""},
		{"in the base NAR", func(m *Manifest) { m.Entries[3].StoredSize, m.Locs[3] = 0, Loc{} }, ""},
		{"in a base NAR that is not named", func(m *Manifest) {
			m.Entries[3].StoredSize, m.Locs[3] = 0, Loc{}
			m.BaseNarHash = [32]byte{}
		}, "there is none"},
		{"delta location without a delta", func(m *Manifest) { m.Deltas[1].Loc.Offset = 5 }, "without a delta"},
		{"delta location in an unpacked manifest", func(m *Manifest) { m.Packs, m.Locs = nil, nil }, "without packs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := packedSample(deltaSample(6))
			tt.edit(m)
			err := m.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

// TestVersion2StillNeedsBases keeps version 2 as it was: only version 3 may carry a
// base count of 0.
func TestVersion2StillNeedsBases(t *testing.T) {
	m := sample(2)
	b := unsealed(t, m)
	b[len(Magic)] = VersionDelta
	// Insert BaseNarHash and a base count of 0 before the entry count.
	at := len(Magic) + 1 + 32 + 2 + 1 + len(m.Chunker)
	ins := append(make([]byte, 32), 0)
	b = append(b[:at], append(ins, b[at:]...)...)
	if _, err := Parse(seal(b)); err == nil || !strings.Contains(err.Error(), "without base chunks") {
		t.Fatalf("Parse = %v", err)
	}
}

// chainedSample is a version 4 manifest: entry 0 is delta-only, entry 1 is in
// the base NAR, the rest have chunk objects; with bases false it has no delta at
// all, only an entry in the base NAR.
func chainedSample(n int, bases bool) *Manifest {
	m := packedSample(deltaSample(n))
	if !bases {
		m = packedSample(sample(n))
		m.BaseNarHash = [32]byte{7}
	}
	if bases {
		m.Entries[0].StoredSize, m.Locs[0] = 0, Loc{}
	}
	m.Entries[1].StoredSize, m.Locs[1] = 0, Loc{}
	// Drop packs no location uses any more, as a writer would.
	used := map[uint32]bool{}
	for i, l := range m.Locs {
		if m.Entries[i].StoredSize > 0 {
			used[l.Pack] = true
		}
		if i < len(m.Deltas) && len(m.Deltas[i].Bases) > 0 {
			used[m.Deltas[i].Loc.Pack] = true
		}
	}
	var packs []chunk.ID
	renum := map[uint32]uint32{}
	for p := range m.Packs {
		if used[uint32(p)] {
			renum[uint32(p)] = uint32(len(packs))
			packs = append(packs, m.Packs[p])
		}
	}
	m.Packs = packs
	for i := range m.Locs {
		if m.Entries[i].StoredSize > 0 {
			m.Locs[i].Pack = renum[m.Locs[i].Pack]
		}
		if i < len(m.Deltas) && len(m.Deltas[i].Bases) > 0 {
			m.Deltas[i].Loc.Pack = renum[m.Deltas[i].Loc.Pack]
		}
	}
	return m
}

func TestChainedRoundTrip(t *testing.T) {
	for _, n := range []int{2, 7, 300} {
		for _, bases := range []bool{false, true} {
			t.Run(fmt.Sprintf("n=%d/bases=%v", n, bases), func(t *testing.T) {
				m := chainedSample(n, bases)
				b := mustMarshal(t, m)
				if b[len(Magic)] != VersionChained {
					t.Fatalf("version %d, want %d", b[len(Magic)], VersionChained)
				}
				got, err := Parse(b)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(got) != fmt.Sprint(m) {
					t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, m)
				}
				want := []Form{DeltaOnly, InBase, Full}
				if !bases {
					want[0] = Full
				}
				for i, f := range want[:min(n, len(want))] {
					if got.Form(i) != f {
						t.Errorf("entry %d: form %v, want %v", i, got.Form(i), f)
					}
				}
				if bases && got.DeltaStoredSize(0) != got.Deltas[0].StoredSize {
					t.Errorf("delta-only entry costs %d, want its delta's %d", got.DeltaStoredSize(0), got.Deltas[0].StoredSize)
				}
				for i := range len(b) {
					bad := bytes.Clone(b)
					bad[i] ^= 0x01
					if _, err := Parse(bad); err == nil {
						t.Fatalf("Parse accepted byte %d ^ 1", i)
					}
				}
				for n := range len(b) {
					if _, err := Parse(b[:n]); err == nil {
						t.Fatalf("Parse accepted %d of %d bytes", n, len(b))
					}
				}
			})
		}
	}
}

// TestVersion4NeedsAnEntryWithoutObject keeps one encoding per manifest: a
// manifest whose entries all have chunk objects is version 3.
func TestVersion4NeedsAnEntryWithoutObject(t *testing.T) {
	b := mustMarshal(t, packedSample(deltaSample(4)))
	b = seal(b[:len(b)-32])
	b[len(Magic)] = VersionChained
	if _, err := Parse(seal(b[:len(b)-32])); err == nil || !strings.Contains(err.Error(), "version 4 without") {
		t.Fatalf("Parse = %v", err)
	}
}
