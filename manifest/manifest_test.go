package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/zeebo/blake3"
)

var small = chunk.Params{Min: 64, Avg: 256, Max: 1024}

// sample returns a valid manifest with n entries cut by small params.
func sample(n int) *Manifest {
	m := &Manifest{Chunker: small.Identity()}
	m.NarHash = sha256.Sum256([]byte(fmt.Sprint("nar", n)))
	for i := range n {
		size := uint32(64 + (i*37)%961)
		if i == n-1 {
			size = uint32(1 + i%50)
		}
		m.Entries = append(m.Entries, Entry{
			ID:         chunk.Sum([]byte(fmt.Sprint("chunk", i))),
			Size:       size,
			StoredSize: uint32(i * 1_000_003), // exercises multi-byte uvarints
		})
		m.NarSize += uint64(size)
	}
	return m
}

// deltaSample returns sample(n) with deltas on every other entry, against
// base chunks shared between neighbouring entries.
func deltaSample(n int) *Manifest {
	m := sample(n)
	m.BaseNarHash = sha256.Sum256([]byte("base"))
	m.Deltas = make([]Delta, n)
	for i := 0; i < n; i += 2 {
		b := uint32(len(m.Bases))
		m.Bases = append(m.Bases, BaseChunk{ID: chunk.Sum([]byte(fmt.Sprint("base", i))), Size: uint32(64 + i%900)})
		d := Delta{Bases: []uint32{b}, StoredSize: uint32(1 + i*300)}
		if b > 0 {
			d.Bases = append([]uint32{b - 1}, d.Bases...)
		}
		m.Deltas[i] = d
	}
	if len(m.Bases) == 0 {
		m.Deltas, m.BaseNarHash = nil, [32]byte{}
	}
	return m
}

func mustMarshal(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seal appends the checksum to an encoding without one, so a test can build
// or edit a body and still reach the checks behind the checksum.
func seal(body []byte) []byte {
	sum := blake3.Sum256(body)
	return append(bytes.Clone(body), sum[:]...)
}

// unsealed is the encoding of m without its checksum.
func unsealed(t testing.TB, m *Manifest) []byte {
	b := mustMarshal(t, m)
	return b[:len(b)-checksumLen]
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    *Manifest
	}{
		{"empty NAR", &Manifest{Chunker: chunk.DefaultParams().Identity(), NarHash: sha256.Sum256(nil)}},
		{"one entry", sample(1)},
		{"many entries", sample(1000)},
		{"default chunker", &Manifest{
			Chunker: chunk.DefaultParams().Identity(),
			NarSize: 262144 + 16384 + 1,
			Entries: []Entry{{Size: 262144, StoredSize: 1 << 31}, {Size: 16384, StoredSize: 0}, {Size: 1, StoredSize: 1<<32 - 1}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustMarshal(t, tt.m)
			if !bytes.HasPrefix(b, []byte(Magic+"\x01")) {
				t.Fatalf("encoding starts %q, want magic and version 1", b[:9])
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.m) {
				t.Fatalf("round trip changed the manifest:\n got %+v\nwant %+v", got, tt.m)
			}
		})
	}
}

func TestEncodingLayout(t *testing.T) {
	m := &Manifest{Chunker: small.Identity(), NarSize: 300, NarHash: [32]byte{0: 0xaa, 31: 0xbb}}
	m.Entries = []Entry{{ID: chunk.ID{0: 1}, Size: 200, StoredSize: 5}, {ID: chunk.ID{31: 2}, Size: 100, StoredSize: 128}}
	var want []byte
	want = append(want, "SHOALMAN"...)
	want = append(want, 1)
	want = append(want, m.NarHash[:]...)
	want = append(want, 0xac, 0x02) // 300
	want = append(want, byte(len(small.Identity())))
	want = append(want, small.Identity()...)
	want = append(want, 2)
	want = append(want, m.Entries[0].ID[:]...)
	want = append(want, 0xc8, 0x01, 0x05) // 200, 5
	want = append(want, m.Entries[1].ID[:]...)
	want = append(want, 0x64, 0x80, 0x01) // 100, 128
	sum := blake3.Sum256(want)
	want = append(want, sum[:]...)
	if got := mustMarshal(t, m); !bytes.Equal(got, want) {
		t.Fatalf("encoding\n got %x\nwant %x", got, want)
	}
}

func TestParseRejectsEveryTruncation(t *testing.T) {
	b := mustMarshal(t, sample(5))
	for n := range len(b) {
		if _, err := Parse(b[:n]); err == nil {
			t.Fatalf("Parse accepted %d of %d bytes", n, len(b))
		}
	}
}

func TestParseRejectsEveryByteFlip(t *testing.T) {
	b := mustMarshal(t, sample(5))
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(b)
			bad[i] ^= bit
			if _, err := Parse(bad); err == nil {
				t.Fatalf("Parse accepted byte %d ^ %#x", i, bit)
			}
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := mustMarshal(t, sample(3))
	hdr := len(Magic) + 1 + 32 // offset of NarSize
	// body edits the encoding of sample(3) and seals it again.
	body := func(edit func(b []byte) []byte) []byte {
		return seal(edit(unsealed(t, sample(3))))
	}
	// empty is the encoding of a manifest without entries (NarSize takes
	// one byte); withoutCount is the same without its entry count.
	empty := unsealed(t, sample(0))
	withoutCount := bytes.Clone(empty[:len(empty)-1])
	// withCount is the encoding of a manifest without entries whose entry
	// count says n.
	withCount := func(n uint64) []byte {
		return seal(binary.AppendUvarint(bytes.Clone(withoutCount), n))
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "magic"},
		{"wrong magic", body(func(b []byte) []byte { b[0] = 's'; return b }), "magic"},
		{"version 0", body(func(b []byte) []byte { b[8] = 0; return b }), "version"},
		{"version 5", body(func(b []byte) []byte { b[8] = 5; return b }), "version"},
		{"checksum", append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]^1), "checksum"},
		{"trailing bytes", body(func(b []byte) []byte { return append(b, 0, 0) }), "unexpected bytes"},
		{"non-minimal uvarint", body(func(b []byte) []byte {
			// Re-encode NarSize with a redundant continuation byte.
			v, n := binary.Uvarint(b[hdr:])
			enc := binary.AppendUvarint(nil, v)
			enc[len(enc)-1] |= 0x80
			enc = append(enc, 0)
			return append(append(append([]byte{}, b[:hdr]...), enc...), b[hdr+n:]...)
		}), "minimally"},
		{"count larger than the input", withCount(1000), "does not fit"},
		{"count above the limit", withCount(MaxEntries + 1), "exceeds"},
		{"count overflows", seal(append(withoutCount, append(bytes.Repeat([]byte{0xff}, 9), 0x7f)...)), "overflows"},
		{"count unterminated", seal(append(withoutCount, bytes.Repeat([]byte{0xff}, 10)...)), "truncated"},
		{"chunker length above the limit", seal(append(append(bytes.Clone(empty[:hdr+1]), 200, 1), bytes.Repeat([]byte{'x'}, 200)...)), "exceeds"},
		{"entry cut short", body(func(b []byte) []byte { return b[:len(b)-2] }), "truncated"},
		{"sizes do not add up", body(func(b []byte) []byte { b[hdr]++; return b }), "add up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.b)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse = %v, want an ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	def := chunk.DefaultParams()
	tests := []struct {
		name string
		edit func(m *Manifest)
		want string // empty: valid
	}{
		{"valid", func(*Manifest) {}, ""},
		{"last entry below Min", func(m *Manifest) { m.Entries[2].Size = 1; m.NarSize = 2*16384 + 1 }, ""},
		{"unknown chunker", func(m *Manifest) { m.Chunker = "rabin-1-2-3" }, "unknown chunker"},
		{"empty chunker", func(m *Manifest) { m.Chunker = "" }, "unknown chunker"},
		{"long chunker", func(m *Manifest) { m.Chunker = strings.Repeat("x", MaxChunkerLen+1) }, "limit"},
		{"zero size", func(m *Manifest) { m.Entries[1].Size = 0; m.NarSize -= 16384 }, "outside"},
		{"size above Max", func(m *Manifest) { m.Entries[2].Size = 262145; m.NarSize += 262145 - 16384 }, "outside"},
		{"inner entry below Min", func(m *Manifest) { m.Entries[0].Size = 16383; m.NarSize-- }, "smallest cut"},
		{"sum below NarSize", func(m *Manifest) { m.NarSize++ }, "add up"},
		{"sum above NarSize", func(m *Manifest) { m.NarSize-- }, "add up"},
		{"NarSize without entries", func(m *Manifest) { m.Entries = nil }, "add up"},
		{"entries with NarSize 0", func(m *Manifest) { m.NarSize = 0 }, "add up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Manifest{Chunker: def.Identity(), NarSize: 3 * 16384}
			m.Entries = []Entry{{Size: 16384}, {Size: 16384}, {Size: 16384}}
			tt.edit(m)
			err := m.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an ErrInvalid mentioning %q", err, tt.want)
			}
			if _, err := m.MarshalBinary(); err == nil {
				t.Fatal("MarshalBinary encoded an invalid manifest")
			}
		})
	}
}

func TestDeltaRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 7, 300} {
		m := deltaSample(n)
		b := mustMarshal(t, m)
		if b[len(Magic)] != VersionDelta {
			t.Fatalf("n=%d: version %d, want %d", n, b[len(Magic)], VersionDelta)
		}
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(m) {
			t.Fatalf("n=%d: round trip differs:\n got %+v\nwant %+v", n, got, m)
		}
		for i := range m.Entries {
			bases, id, size, ok := got.DeltaOf(i)
			if ok != (i%2 == 0) {
				t.Fatalf("n=%d entry %d: DeltaOf ok=%v", n, i, ok)
			}
			if !ok {
				if got.DeltaStoredSize(i) != m.Entries[i].StoredSize {
					t.Fatalf("entry %d: DeltaStoredSize without delta = %d", i, got.DeltaStoredSize(i))
				}
				continue
			}
			ids := make([]chunk.ID, len(bases))
			for j, b := range bases {
				ids[j] = b.ID
			}
			if id != chunk.DeltaID(m.Entries[i].ID, ids) || size != m.Deltas[i].StoredSize {
				t.Fatalf("entry %d: DeltaOf = %s, %d", i, id, size)
			}
			if want := min(size, m.Entries[i].StoredSize); got.DeltaStoredSize(i) != want {
				t.Fatalf("entry %d: DeltaStoredSize = %d, want %d", i, got.DeltaStoredSize(i), want)
			}
		}
	}
	// Without deltas the writer keeps to version 1, which older readers know.
	if b := mustMarshal(t, sample(3)); b[len(Magic)] != Version {
		t.Fatalf("plain manifest written as version %d", b[len(Magic)])
	}
}

func TestValidateDeltas(t *testing.T) {
	tests := []struct {
		name string
		edit func(m *Manifest)
		want string // empty: valid
	}{
		{"valid", func(*Manifest) {}, ""},
		{"deltas without bases", func(m *Manifest) { m.Bases = nil }, "without base chunks"},
		{"base NAR without bases", func(m *Manifest) { m.Bases, m.Deltas = nil, nil }, "without base chunks"},
		{"short delta table", func(m *Manifest) { m.Deltas = m.Deltas[:1] }, "delta records"},
		{"unused base", func(m *Manifest) { m.Bases = append(m.Bases, BaseChunk{ID: chunk.Sum([]byte("x")), Size: 1}) }, "used by no delta"},
		{"duplicate base", func(m *Manifest) { m.Bases[1].ID = m.Bases[0].ID }, "twice"},
		{"base size zero", func(m *Manifest) { m.Bases[0].Size = 0 }, "outside"},
		{"base index out of range", func(m *Manifest) { m.Deltas[2].Bases[0] = 99 }, "out of"},
		{"size without bases", func(m *Manifest) { m.Deltas[1].StoredSize = 5 }, "without bases"},
		{"bases without size", func(m *Manifest) { m.Deltas[0].StoredSize = 0 }, "stored size 0"},
		{"too many bases", func(m *Manifest) { m.Deltas[2].Bases = make([]uint32, chunk.MaxDeltaBases+1) }, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := deltaSample(6)
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

func TestOffsetsAndStoredSize(t *testing.T) {
	m := &Manifest{Entries: []Entry{{Size: 10, StoredSize: 4}, {Size: 20, StoredSize: 1<<32 - 1}, {Size: 5, StoredSize: 6}}}
	if got, want := fmt.Sprint(m.Offsets()), "[0 10 30]"; got != want {
		t.Errorf("Offsets = %s, want %s", got, want)
	}
	if got, want := m.StoredSize(), uint64(4+1<<32-1+6); got != want {
		t.Errorf("StoredSize = %d, want %d", got, want)
	}
	empty := &Manifest{}
	if len(empty.Offsets()) != 0 || empty.StoredSize() != 0 {
		t.Error("empty manifest has offsets or a stored size")
	}
}

func TestKey(t *testing.T) {
	// sha256 of the empty string, as `nix hash to-base32` prints it.
	empty := sha256.Sum256(nil)
	if got, want := Key(empty), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"; got != want {
		t.Fatalf("Key(sha256(\"\")) = %s, want %s", got, want)
	}
	for _, h := range [][32]byte{empty, {}, {31: 0xff}, sha256.Sum256([]byte("nar"))} {
		got, err := ParseKey(Key(h))
		if err != nil || got != h {
			t.Errorf("ParseKey(Key(%x)) = %x, %v", h, got, err)
		}
	}
}

func TestParseKeyRejects(t *testing.T) {
	k := Key(sha256.Sum256(nil))
	for _, s := range []string{
		"",
		k[:51],
		k + "0",
		"sha256:" + k,
		strings.ToUpper(k),
		"e" + k[1:], // e, o, t, u are not in the nix32 alphabet
		"2" + k[1:], // the first character carries the 4 bits above 256
		"z" + k[1:],
	} {
		if h, err := ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q) = %x, want an error", s, h)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, n := range []int{0, 1, 3, 40} {
		f.Add(mustMarshal(f, sample(n)))
		f.Add(unsealed(f, sample(n)))
		f.Add(mustMarshal(f, deltaSample(n)))
		f.Add(unsealed(f, deltaSample(n)))
		if n > 0 {
			f.Add(mustMarshal(f, packedSample(sample(n))))
			f.Add(mustMarshal(f, packedSample(deltaSample(n))))
		}
	}
	f.Add([]byte(Magic + "\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Also parse the input with a valid checksum appended, so mutations
		// reach the field decoding behind the checksum.
		for _, in := range [][]byte{b, seal(b)} {
			m, err := Parse(in)
			if err != nil {
				continue
			}
			// Whatever Parse accepts is valid and has exactly one encoding.
			again, err := m.MarshalBinary()
			if err != nil {
				t.Fatalf("Parse accepted a manifest MarshalBinary refuses: %v", err)
			}
			if !bytes.Equal(again, in) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, in)
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	enc := mustMarshal(b, sample(4096)) // a 256 MiB NAR at the default average
	b.SetBytes(int64(len(enc)))
	for range b.N {
		if _, err := Parse(enc); err != nil {
			b.Fatal(err)
		}
	}
}
