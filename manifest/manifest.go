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
	// Version is the plain encoding: chunks only. MarshalBinary writes it
	// for every manifest without deltas, so clients that predate deltas
	// keep reading those.
	Version = 1
	// VersionDelta adds a table of base chunks and, per entry, the delta
	// object that rebuilds it from some of them.
	VersionDelta = 2
	// VersionPacked adds, per entry, where its chunk object and its delta
	// object lie in the store's pack files (store layout 3), so a client
	// reads them with ranged reads and no index look-up.
	VersionPacked = 3
	// VersionChained is a packed manifest of a delta-primary store: some
	// entries have no chunk object of their own (StoredSize 0), only a delta
	// against base chunks or the base NAR's copy, so a reader rebuilds them
	// through the chain of base manifests (package chunkstore/chain).
	VersionChained = 4
	// MaxPackSize bounds a pack file, and so every offset and object end a
	// location names.
	MaxPackSize = 1 << 32
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
	// minDeltaEntryLen and minBaseLen are the same bounds for version 2.
	minDeltaEntryLen = len(chunk.ID{}) + 3
	minBaseLen       = len(chunk.ID{}) + 1
	// minPackedEntryLen: an ID and five one-byte uvarints (Size, StoredSize,
	// pack, offset, delta base count).
	minPackedEntryLen = len(chunk.ID{}) + 5
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

// BaseChunk is a chunk of an older NAR (the base) that deltas decode
// against. Its Size lets a client bound a dictionary before assembling it.
type BaseChunk struct {
	ID   chunk.ID
	Size uint32
}

// Delta offers an entry as a delta object: the chunk compressed against the
// concatenation of some base chunks. A client that holds those base chunks
// fetches StoredSize bytes instead of the entry's full object. The zero
// Delta means the entry has none.
type Delta struct {
	Bases      []uint32 // indexes into Manifest.Bases, in dictionary order
	StoredSize uint32   // length of the delta object
	Loc        Loc      // where the delta object lies, in a packed manifest
}

// Loc is where an object lies in a packed store: StoredSize bytes at Offset
// in the pack Manifest.Packs[Pack]. A location is a claim like the rest of
// the manifest; the bytes found there are checked against the object's ID.
type Loc struct {
	Pack   uint32
	Offset uint64
}

// Manifest lists the chunks of one NAR.
type Manifest struct {
	NarHash [32]byte // SHA-256 digest of the uncompressed NAR
	NarSize uint64
	Chunker string // chunk.Params.Identity() used to cut it
	Entries []Entry

	// BaseNarHash names the NAR the base chunks were taken from (zero when
	// there are no deltas), so a client can tell which older version to
	// look for in its cache or /nix/store.
	BaseNarHash [32]byte
	// Bases lists each base chunk any delta uses, once. Empty exactly when
	// the manifest has no deltas.
	Bases []BaseChunk
	// Deltas is empty, or parallel to Entries.
	Deltas []Delta

	// Packs lists the pack files (by pack ID) that locations point into,
	// each once. Non-empty exactly when the manifest is packed (version 3).
	Packs []chunk.ID
	// Locs is empty, or parallel to Entries: where each chunk object lies.
	Locs []Loc
}

// Packed reports whether the manifest says where its objects lie in pack
// files (version 3) rather than leaving them to be found by ID.
func (m *Manifest) Packed() bool { return len(m.Packs) > 0 }

// Version is the encoding MarshalBinary writes for m: packed manifests are
// version 4 when an entry has no chunk object of its own, else version 3;
// others version 2 with deltas and version 1 without.
func (m *Manifest) Version() byte {
	switch {
	case m.Packed() && m.Chained():
		return VersionChained
	case m.Packed():
		return VersionPacked
	case m.HasDeltas():
		return VersionDelta
	}
	return Version
}

// Chained reports whether some entry has no chunk object of its own and is
// rebuilt from the base NAR's chunks: a reader without those needs the chain
// of base manifests.
func (m *Manifest) Chained() bool {
	if !m.Packed() {
		return false
	}
	for _, e := range m.Entries {
		if e.StoredSize == 0 {
			return true
		}
	}
	return false
}

// Form says how entry i is stored. Entries of unpacked manifests are Full.
func (m *Manifest) Form(i int) Form {
	switch {
	case m.Entries[i].StoredSize > 0 || !m.Packed():
		return Full
	case i < len(m.Deltas) && len(m.Deltas[i].Bases) > 0:
		return DeltaOnly
	}
	return InBase
}

// Form is how an entry's chunk is kept in the store.
type Form uint8

const (
	// Full: the entry has a chunk object (and maybe a delta besides).
	Full Form = iota
	// DeltaOnly: the entry's only stored form is its delta object; a reader
	// rebuilds it from base chunks, which the base NAR's manifest locates.
	DeltaOnly
	// InBase: the chunk is also in the base NAR, whose manifest says how it
	// is stored; this manifest stores nothing for it.
	InBase
)

func (f Form) String() string {
	switch f {
	case Full:
		return "full"
	case DeltaOnly:
		return "delta-only"
	case InBase:
		return "in-base"
	}
	return fmt.Sprintf("form(%d)", uint8(f))
}

// HasDeltas reports whether any entry can be fetched as a delta.
func (m *Manifest) HasDeltas() bool { return len(m.Bases) > 0 }

// DeltaOf returns the base chunks, in dictionary order, and the delta
// object ID of entry i, or ok false when the entry has no delta.
func (m *Manifest) DeltaOf(i int) (bases []BaseChunk, id chunk.ID, storedSize uint32, ok bool) {
	if i >= len(m.Deltas) || len(m.Deltas[i].Bases) == 0 {
		return nil, chunk.ID{}, 0, false
	}
	d := m.Deltas[i]
	bases = make([]BaseChunk, len(d.Bases))
	ids := make([]chunk.ID, len(d.Bases))
	for j, b := range d.Bases {
		bases[j] = m.Bases[b]
		ids[j] = m.Bases[b].ID
	}
	return bases, chunk.DeltaID(m.Entries[i].ID, ids), d.StoredSize, true
}

// MarshalBinary encodes m in the layout documented in docs/format.md:
// version 1 without deltas, version 2 with. It refuses a manifest that does not Validate, so nothing
// shoal writes can fail to Parse.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encoding manifest: %w", err)
	}
	b := make([]byte, 0, len(Magic)+1+hashLen+3*binary.MaxVarintLen64+len(m.Chunker)+
		len(m.Entries)*(len(chunk.ID{})+2*binary.MaxVarintLen32)+checksumLen)
	version := m.Version()
	b = append(b, Magic...)
	b = append(b, version)
	b = append(b, m.NarHash[:]...)
	b = binary.AppendUvarint(b, m.NarSize)
	b = binary.AppendUvarint(b, uint64(len(m.Chunker)))
	b = append(b, m.Chunker...)
	if version >= VersionDelta {
		// Version 3 always carries the base fields, with a count of 0 when
		// the manifest has no deltas.
		b = append(b, m.BaseNarHash[:]...)
		b = binary.AppendUvarint(b, uint64(len(m.Bases)))
		for _, c := range m.Bases {
			b = append(b, c.ID[:]...)
			b = binary.AppendUvarint(b, uint64(c.Size))
		}
	}
	if version >= VersionPacked {
		b = binary.AppendUvarint(b, uint64(len(m.Packs)))
		for _, id := range m.Packs {
			b = append(b, id[:]...)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(m.Entries)))
	for i, e := range m.Entries {
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, uint64(e.Size))
		b = binary.AppendUvarint(b, uint64(e.StoredSize))
		if version >= VersionPacked && e.StoredSize > 0 {
			b = binary.AppendUvarint(b, uint64(m.Locs[i].Pack))
			b = binary.AppendUvarint(b, m.Locs[i].Offset)
		}
		if version >= VersionPacked && !m.HasDeltas() {
			b = append(b, 0)
		} else if version >= VersionDelta {
			d := m.Deltas[i]
			b = binary.AppendUvarint(b, uint64(len(d.Bases)))
			for _, x := range d.Bases {
				b = binary.AppendUvarint(b, uint64(x))
			}
			if len(d.Bases) > 0 {
				b = binary.AppendUvarint(b, uint64(d.StoredSize))
				if version >= VersionPacked {
					b = binary.AppendUvarint(b, uint64(d.Loc.Pack))
					b = binary.AppendUvarint(b, d.Loc.Offset)
				}
			}
		}
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
	version := b[len(Magic)]
	if version < Version || version > VersionChained {
		return nil, fmt.Errorf("unsupported version %d, want %d to %d", version, Version, VersionChained)
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
	entryLen := minEntryLen
	if version >= VersionDelta {
		entryLen = minDeltaEntryLen
		copy(m.BaseNarHash[:], d.bytes(hashLen))
		nb := d.uvarint("base count", MaxEntries)
		if d.err != nil {
			return nil, d.err
		}
		if nb == 0 && version == VersionDelta {
			return nil, errors.New("version 2 without base chunks")
		}
		if nb > uint64(len(d.b)/minBaseLen) {
			return nil, fmt.Errorf("base count %d does not fit in the remaining %d bytes", nb, len(d.b))
		}
		if nb > 0 {
			m.Bases = make([]BaseChunk, nb)
		}
		for i := range m.Bases {
			c := &m.Bases[i]
			copy(c.ID[:], d.bytes(len(c.ID)))
			c.Size = uint32(d.uvarint("base chunk size", math.MaxUint32))
			if d.err != nil {
				return nil, fmt.Errorf("base %d: %w", i, d.err)
			}
		}
	}
	if version >= VersionPacked {
		entryLen = minPackedEntryLen
		if version == VersionChained {
			entryLen = minDeltaEntryLen
		}
		np := d.uvarint("pack count", 2*MaxEntries)
		if d.err != nil {
			return nil, d.err
		}
		if np == 0 {
			return nil, fmt.Errorf("version %d without packs", version)
		}
		if np > uint64(len(d.b)/hashLen) {
			return nil, fmt.Errorf("pack count %d does not fit in the remaining %d bytes", np, len(d.b))
		}
		m.Packs = make([]chunk.ID, np)
		for i := range m.Packs {
			copy(m.Packs[i][:], d.bytes(hashLen))
		}
	}
	count := d.uvarint("entry count", MaxEntries)
	if d.err != nil {
		return nil, d.err
	}
	if count > uint64(len(d.b)/entryLen) {
		return nil, fmt.Errorf("entry count %d does not fit in the remaining %d bytes", count, len(d.b))
	}
	if count > 0 {
		m.Entries = make([]Entry, count)
		if version >= VersionDelta && len(m.Bases) > 0 {
			m.Deltas = make([]Delta, count)
		}
		if version >= VersionPacked {
			m.Locs = make([]Loc, count)
		}
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		copy(e.ID[:], d.bytes(len(e.ID)))
		e.Size = uint32(d.uvarint("chunk size", math.MaxUint32))
		e.StoredSize = uint32(d.uvarint("stored size", math.MaxUint32))
		if version >= VersionPacked && e.StoredSize > 0 {
			m.Locs[i] = d.loc(len(m.Packs))
		}
		if version >= VersionDelta {
			// A version 3 manifest without base chunks still has the count, 0.
			limit := uint64(chunk.MaxDeltaBases)
			if len(m.Bases) == 0 {
				limit = 0
			}
			k := d.uvarint("delta base count", limit)
			if k > 0 {
				dl := &m.Deltas[i]
				dl.Bases = make([]uint32, k)
				for j := range dl.Bases {
					dl.Bases[j] = uint32(d.uvarint("delta base index", uint64(len(m.Bases)-1)))
				}
				dl.StoredSize = uint32(d.uvarint("delta stored size", math.MaxUint32))
				if version >= VersionPacked {
					dl.Loc = d.loc(len(m.Packs))
				}
			}
		}
		if d.err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, d.err)
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d unexpected bytes after the entries", len(d.b))
	}
	if version == VersionChained && !m.Chained() {
		// Such a manifest encodes as version 3; one encoding per manifest.
		return nil, errors.New("version 4 without an entry lacking its chunk object")
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

// loc reads a location's pack index (below packs) and offset.
func (d *decoder) loc(packs int) Loc {
	p := d.uvarint("pack index", uint64(packs-1))
	off := d.uvarint("pack offset", MaxPackSize-1)
	return Loc{Pack: uint32(p), Offset: off}
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
	if err := m.validateDeltas(p); err != nil {
		return err
	}
	return m.validateLocs()
}

// validateLocs requires locations to be all or nothing, every pack to be
// listed once and used (so the encoding stays unique), every location to lie
// inside a pack's bounds, and every packed entry to have a stored object.
func (m *Manifest) validateLocs() error {
	if len(m.Packs) == 0 {
		if len(m.Locs) != 0 {
			return errors.New("locations without packs")
		}
		for i, d := range m.Deltas {
			if d.Loc != (Loc{}) {
				return fmt.Errorf("entry %d: delta location without packs", i)
			}
		}
		return nil
	}
	if len(m.Locs) != len(m.Entries) {
		return fmt.Errorf("%d locations for %d entries", len(m.Locs), len(m.Entries))
	}
	if len(m.Packs) > 2*MaxEntries {
		return fmt.Errorf("%d packs, limit %d", len(m.Packs), 2*MaxEntries)
	}
	seen := make(map[chunk.ID]bool, len(m.Packs))
	for i, id := range m.Packs {
		if seen[id] {
			return fmt.Errorf("pack %d: %s listed twice", i, id)
		}
		seen[id] = true
	}
	used := make([]bool, len(m.Packs))
	check := func(what string, i int, l Loc, size uint32) error {
		if int(l.Pack) >= len(m.Packs) {
			return fmt.Errorf("entry %d: %s in pack %d of %d", i, what, l.Pack, len(m.Packs))
		}
		if l.Offset > MaxPackSize || uint64(size) > MaxPackSize-l.Offset {
			return fmt.Errorf("entry %d: %s of %d bytes at %d ends past the largest pack", i, what, size, l.Offset)
		}
		used[l.Pack] = true
		return nil
	}
	for i, e := range m.Entries {
		if e.StoredSize == 0 {
			// Delta-only or in the base NAR (version 4): no chunk object, no location.
			if m.Locs[i] != (Loc{}) {
				return fmt.Errorf("entry %d: location without a chunk object", i)
			}
		} else if err := check("chunk object", i, m.Locs[i], e.StoredSize); err != nil {
			return err
		}
		if i < len(m.Deltas) && len(m.Deltas[i].Bases) > 0 {
			if err := check("delta object", i, m.Deltas[i].Loc, m.Deltas[i].StoredSize); err != nil {
				return err
			}
		} else if i < len(m.Deltas) && m.Deltas[i].Loc != (Loc{}) {
			return fmt.Errorf("entry %d: delta location without a delta", i)
		}
	}
	for i, u := range used {
		if !u {
			return fmt.Errorf("pack %d is used by no location", i)
		}
	}
	return nil
}

// validateDeltas requires the delta tables to be all or nothing, every base
// chunk to be used and listed once (so the encoding stays unique), and every
// dictionary and delta to be within the bounds a decoder accepts.
func (m *Manifest) validateDeltas(p chunk.Params) error {
	// Only a packed manifest may lack chunk objects (versions 1 and 2 name
	// objects by ID, and their StoredSize is only a price).
	inBase := false
	for i := range m.Entries {
		if m.Packed() && m.Form(i) == InBase {
			inBase = true
		}
	}
	if inBase && m.BaseNarHash == ([32]byte{}) {
		return errors.New("an entry is in the base NAR, but there is none")
	}
	if len(m.Bases) == 0 {
		if len(m.Deltas) != 0 {
			return errors.New("deltas without base chunks")
		}
		if m.BaseNarHash != ([32]byte{}) && !inBase {
			return errors.New("a base NAR without base chunks or entries in it")
		}
		return nil
	}
	if len(m.Deltas) != len(m.Entries) {
		return fmt.Errorf("%d delta records for %d entries", len(m.Deltas), len(m.Entries))
	}
	if len(m.Bases) > MaxEntries {
		return fmt.Errorf("%d base chunks, limit %d", len(m.Bases), MaxEntries)
	}
	seen := make(map[chunk.ID]bool, len(m.Bases))
	for i, c := range m.Bases {
		if c.Size == 0 || c.Size > uint32(p.Max) {
			return fmt.Errorf("base %d: size %d outside 1..%d", i, c.Size, p.Max)
		}
		if seen[c.ID] {
			return fmt.Errorf("base %d: chunk %s listed twice", i, c.ID)
		}
		seen[c.ID] = true
	}
	used := make([]bool, len(m.Bases))
	for i, d := range m.Deltas {
		if len(d.Bases) == 0 {
			if d.StoredSize != 0 {
				return fmt.Errorf("entry %d: delta size %d without bases", i, d.StoredSize)
			}
			continue
		}
		if len(d.Bases) > chunk.MaxDeltaBases {
			return fmt.Errorf("entry %d: %d delta bases, limit %d", i, len(d.Bases), chunk.MaxDeltaBases)
		}
		if d.StoredSize == 0 {
			return fmt.Errorf("entry %d: delta with stored size 0", i)
		}
		if m.Entries[i].Size > chunk.MaxDeltaChunk {
			return fmt.Errorf("entry %d: chunk of %d bytes is too large for a delta", i, m.Entries[i].Size)
		}
		var dict uint64
		for _, b := range d.Bases {
			if int(b) >= len(m.Bases) {
				return fmt.Errorf("entry %d: base index %d out of %d", i, b, len(m.Bases))
			}
			used[b] = true
			dict += uint64(m.Bases[b].Size)
		}
		if dict > chunk.MaxDictSize {
			return fmt.Errorf("entry %d: dictionary of %d bytes, limit %d", i, dict, chunk.MaxDictSize)
		}
	}
	for i, u := range used {
		if !u {
			return fmt.Errorf("base %d is used by no delta", i)
		}
	}
	return nil
}

// DeltaStoredSize is what fetching entry i costs for a client that holds
// its base chunks: the delta's size when it has one and it is smaller (or the
// only stored form), else the full object's; 0 for an entry in the base NAR.
func (m *Manifest) DeltaStoredSize(i int) uint32 {
	if i < len(m.Deltas) && len(m.Deltas[i].Bases) > 0 {
		if m.Form(i) == DeltaOnly {
			return m.Deltas[i].StoredSize
		}
		return min(m.Deltas[i].StoredSize, m.Entries[i].StoredSize)
	}
	return m.Entries[i].StoredSize
}

// StoredSize is the total size of the stored chunk objects, what fetching
// every chunk would cost. For a chained manifest (version 4) it leaves out
// the entries without a chunk object, which cost a walk of the chain.
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
