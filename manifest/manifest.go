// Package manifest defines the list of chunks that makes up one NAR, its
// compact binary encoding, and its name in the store.
//
// A manifest is untrusted input: whoever serves it, a reader parses it
// strictly, and the NAR assembled from it is still checked against the
// NarHash from a signed narinfo before Nix sees a byte.
package manifest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/zeebo/blake3"
)

const (
	// Magic starts every encoded manifest.
	Magic = "SHOALMAN"
	// Version is the encoding version this package writes and reads.
	Version = 1
	// MaxEntries bounds the chunks of one manifest: 64 Mi entries cover a
	// NAR of at least 1 TiB at the smallest allowed Min.
	MaxEntries = 64 << 20
	// MaxChunkerLen bounds the chunker identity string.
	MaxChunkerLen = 128
)

const (
	hashLen     = 32
	checksumLen = 32
	// minEntryLen is the smallest encoded entry: an ID and two one-byte
	// uvarints. Parse uses it to refuse counts the input cannot hold before
	// allocating for them.
	minEntryLen = len(chunk.ID{}) + 2
)

// ErrInvalid is wrapped by every error Parse and Validate return for a
// manifest that is malformed or inconsistent, as opposed to one that could
// not be read at all.
var ErrInvalid = errors.New("invalid manifest")

// Entry is one chunk of a NAR, in NAR order.
type Entry struct {
	ID         chunk.ID
	Size       uint32 // uncompressed length
	StoredSize uint32 // length of the stored zstd object, so a client can price a NAR before fetching
}

// Manifest lists the chunks of one NAR.
type Manifest struct {
	NarHash [32]byte // SHA-256 digest of the uncompressed NAR
	NarSize uint64
	Chunker string // chunk.Params.Identity() used to cut it
	Entries []Entry
}

// MarshalBinary encodes m in the version 1 layout documented in
// docs/format.md. It refuses a manifest that does not Validate, so nothing
// shoal writes can fail to Parse.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encoding manifest: %w", err)
	}
	b := make([]byte, 0, len(Magic)+1+hashLen+3*binary.MaxVarintLen64+len(m.Chunker)+
		len(m.Entries)*(len(chunk.ID{})+2*binary.MaxVarintLen32)+checksumLen)
	b = append(b, Magic...)
	b = append(b, Version)
	b = append(b, m.NarHash[:]...)
	b = binary.AppendUvarint(b, m.NarSize)
	b = binary.AppendUvarint(b, uint64(len(m.Chunker)))
	b = append(b, m.Chunker...)
	b = binary.AppendUvarint(b, uint64(len(m.Entries)))
	for _, e := range m.Entries {
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, uint64(e.Size))
		b = binary.AppendUvarint(b, uint64(e.StoredSize))
	}
	sum := blake3.Sum256(b)
	return append(b, sum[:]...), nil
}

// Parse decodes a manifest strictly: magic, version, a trailing BLAKE3-256
// checksum over everything before it, minimal uvarints, no trailing bytes,
// the limits above, and Validate. Every byte string Parse accepts is exactly
// what MarshalBinary produces for the result, so a manifest has one encoding.
// Errors wrap ErrInvalid.
func Parse(b []byte) (*Manifest, error) {
	m, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("parsing manifest: %w: %w", ErrInvalid, err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("parsing manifest: %w", err)
	}
	return m, nil
}

func parse(b []byte) (*Manifest, error) {
	if len(b) < len(Magic)+1 || string(b[:len(Magic)]) != Magic {
		return nil, errors.New("missing magic " + Magic)
	}
	if v := b[len(Magic)]; v != Version {
		return nil, fmt.Errorf("unsupported version %d, want %d", v, Version)
	}
	if len(b) < len(Magic)+1+hashLen+checksumLen {
		return nil, fmt.Errorf("truncated: %d bytes", len(b))
	}
	body, trailer := b[:len(b)-checksumLen], b[len(b)-checksumLen:]
	if sum := blake3.Sum256(body); string(sum[:]) != string(trailer) {
		return nil, errors.New("checksum mismatch: truncated or corrupted")
	}

	d := decoder{b: body[len(Magic)+1:]}
	m := &Manifest{}
	copy(m.NarHash[:], d.bytes(hashLen))
	m.NarSize = d.uvarint("NarSize", math.MaxUint64)
	chunkerLen := d.uvarint("chunker identity length", MaxChunkerLen)
	m.Chunker = string(d.bytes(int(chunkerLen)))
	count := d.uvarint("entry count", MaxEntries)
	if d.err != nil {
		return nil, d.err
	}
	if count > uint64(len(d.b)/minEntryLen) {
		return nil, fmt.Errorf("entry count %d does not fit in the remaining %d bytes", count, len(d.b))
	}
	if count > 0 {
		m.Entries = make([]Entry, count)
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		copy(e.ID[:], d.bytes(len(e.ID)))
		e.Size = uint32(d.uvarint("chunk size", math.MaxUint32))
		e.StoredSize = uint32(d.uvarint("stored size", math.MaxUint32))
		if d.err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, d.err)
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d unexpected bytes after the entries", len(d.b))
	}
	return m, nil
}

// decoder reads fields from the front of b, remembering the first error so
// that a run of reads needs one check.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = fmt.Errorf("truncated: want %d bytes, have %d", n, len(d.b))
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

// uvarint reads a minimally encoded uvarint no larger than limit. Minimal
// encoding keeps the manifest's bytes (and so any hash of them) unique.
func (d *decoder) uvarint(field string, limit uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		d.err = fmt.Errorf("%s: truncated", field)
	case n < 0:
		d.err = fmt.Errorf("%s: overflows 64 bits", field)
	case n > 1 && d.b[n-1] == 0:
		d.err = fmt.Errorf("%s: not minimally encoded", field)
	case v > limit:
		d.err = fmt.Errorf("%s: %d exceeds %d", field, v, limit)
	}
	if d.err != nil {
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Validate checks that m is consistent: the chunker identity parses, every
// Size is between 1 and that chunker's Max, every Size but the last is at
// least the chunker's smallest cut, the sizes add up to NarSize (so NarSize
// is 0 exactly when there are no entries), and the counts are within limits.
// It cannot check NarHash; only the assembled NAR can. Errors wrap
// ErrInvalid.
func (m *Manifest) Validate() error {
	if err := m.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func (m *Manifest) validate() error {
	if len(m.Chunker) > MaxChunkerLen {
		return fmt.Errorf("chunker identity is %d bytes, limit %d", len(m.Chunker), MaxChunkerLen)
	}
	p, err := chunk.ParseIdentity(m.Chunker)
	if err != nil {
		return err
	}
	if len(m.Entries) > MaxEntries {
		return fmt.Errorf("%d entries, limit %d", len(m.Entries), MaxEntries)
	}
	var sum uint64
	for i, e := range m.Entries {
		last := i == len(m.Entries)-1
		switch {
		case e.Size == 0 || e.Size > uint32(p.Max):
			return fmt.Errorf("entry %d: size %d outside 1..%d", i, e.Size, p.Max)
		case !last && int(e.Size) < p.SmallestCut():
			return fmt.Errorf("entry %d: size %d below the chunker's smallest cut %d", i, e.Size, p.SmallestCut())
		}
		sum += uint64(e.Size)
	}
	if sum != m.NarSize {
		return fmt.Errorf("entry sizes add up to %d, NarSize is %d", sum, m.NarSize)
	}
	return nil
}

// StoredSize is the total size of the stored chunk objects, what fetching
// every chunk would cost.
func (m *Manifest) StoredSize() uint64 {
	var n uint64
	for _, e := range m.Entries {
		n += uint64(e.StoredSize)
	}
	return n
}

// Offsets returns the offset in the NAR at which each entry starts.
func (m *Manifest) Offsets() []uint64 {
	out := make([]uint64, len(m.Entries))
	var off uint64
	for i, e := range m.Entries {
		out[i] = off
		off += uint64(e.Size)
	}
	return out
}

// Key names a manifest by its NAR's SHA-256 in nix32, the 52 characters Nix
// writes after "sha256:" in a narinfo's NarHash, so a narinfo leads to its
// manifest without any other index.
func Key(narHash [32]byte) string {
	return nixbase32.EncodeToString(narHash[:])
}

// ParseKey is the strict inverse of Key: exactly 52 characters of the nix32
// alphabet, in the one spelling Key produces.
func ParseKey(s string) ([32]byte, error) {
	var h [32]byte
	if len(s) != nixbase32.EncodedLen(len(h)) {
		return h, fmt.Errorf("parsing manifest key %q: want %d characters, got %d", s, nixbase32.EncodedLen(len(h)), len(s))
	}
	b, err := nixbase32.DecodeString(s)
	if err != nil {
		return h, fmt.Errorf("parsing manifest key %q: %w", s, err)
	}
	if len(b) != len(h) {
		return h, fmt.Errorf("parsing manifest key %q: decodes to %d bytes", s, len(b))
	}
	copy(h[:], b)
	if Key(h) != s {
		return [32]byte{}, fmt.Errorf("parsing manifest key %q: not in canonical form", s)
	}
	return h, nil
}
