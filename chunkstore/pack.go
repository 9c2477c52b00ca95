package chunkstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/zeebo/blake3"
)

// PackPrefix holds the pack files of a packed store (layout 3) and their indexes.
const PackPrefix = "packs/"

// Pack index encoding (docs/format.md, "Pack index").
const (
	packIndexMagic   = "SHOALIDX"
	packIndexVersion = 1
	// maxPackIndexSize bounds an index: a pack of manifest.MaxPackSize bytes of the
	// smallest objects (a few bytes each) would need more, but no writer packs
	// objects that small that densely; 64 MiB is 1.7 million objects.
	maxPackIndexSize = 64 << 20
	minPackObjectLen = 1 + 32 + 1
)

// ObjectKind says what a pack object is. Kinds are part of the format.
type ObjectKind uint8

const (
	// KindChunk is a chunk object (docs/format.md, "Chunk object"), named by its
	// chunk ID.
	KindChunk ObjectKind = 1
	// KindDelta is a delta object (docs/format.md, "Delta object"), named by its
	// delta ID.
	KindDelta ObjectKind = 2
)

func (k ObjectKind) String() string {
	switch k {
	case KindChunk:
		return "chunk"
	case KindDelta:
		return "delta"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// PackKey names a pack file by its pack ID, the BLAKE3-256 of its bytes: a pack is
// written once and never changes, so its name is a checksum a verifier can test.
func PackKey(id chunk.ID) string {
	h := id.String()
	return PackPrefix + h[:2] + "/" + h + ".pack"
}

// PackIndexKey names the index of a pack, beside it.
func PackIndexKey(id chunk.ID) string {
	h := id.String()
	return PackPrefix + h[:2] + "/" + h + ".idx"
}

// ParsePackKey returns the pack ID named by a pack file's key.
func ParsePackKey(key string) (chunk.ID, bool) { return parsePackKey(key, ".pack", PackKey) }

// ParsePackIndexKey returns the pack ID named by a pack index's key.
func ParsePackIndexKey(key string) (chunk.ID, bool) {
	return parsePackKey(key, ".idx", PackIndexKey)
}

func parsePackKey(key, suffix string, name func(chunk.ID) string) (chunk.ID, bool) {
	rest, ok := strings.CutPrefix(key, PackPrefix)
	if !ok || len(rest) != 2+1+64+len(suffix) || rest[2] != '/' || !strings.HasSuffix(rest, suffix) {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(rest[3 : 3+64])
	if err != nil || name(id) != key {
		return chunk.ID{}, false
	}
	return id, true
}

// PackObject is one object of a pack, where it lies in it.
type PackObject struct {
	Kind   ObjectKind
	ID     chunk.ID // chunk ID or delta ID
	Offset uint64
	Length uint32
}

// PackIndex lists a pack's objects in the order they lie in it, back to back from
// offset 0 to the pack's end. It is what gc, verify and a publish that needs to
// know what the store holds read instead of the packs themselves.
type PackIndex struct {
	Pack    chunk.ID
	Size    uint64
	Objects []PackObject
}

// MarshalBinary encodes the index. Offsets are not written: they follow from the
// lengths, which also makes a gap or an overlap between objects unrepresentable.
func (x *PackIndex) MarshalBinary() ([]byte, error) {
	var off uint64
	for i, o := range x.Objects {
		if o.Kind != KindChunk && o.Kind != KindDelta {
			return nil, fmt.Errorf("encoding index of pack %s: object %d has unknown %s", x.Pack, i, o.Kind)
		}
		if o.Offset != off || o.Length == 0 {
			return nil, fmt.Errorf("encoding index of pack %s: object %d of %d bytes at %d, want a non-empty object at %d", x.Pack, i, o.Length, o.Offset, off)
		}
		off += uint64(o.Length)
	}
	if off != x.Size || off > manifest.MaxPackSize {
		return nil, fmt.Errorf("encoding index of pack %s: objects cover %d bytes of a pack of %d (at most %d)", x.Pack, off, x.Size, uint64(manifest.MaxPackSize))
	}
	b := make([]byte, 0, len(packIndexMagic)+1+32+binary.MaxVarintLen64+len(x.Objects)*(1+32+3)+32)
	b = append(b, packIndexMagic...)
	b = append(b, packIndexVersion)
	b = append(b, x.Pack[:]...)
	b = binary.AppendUvarint(b, uint64(len(x.Objects)))
	for _, o := range x.Objects {
		b = append(b, byte(o.Kind))
		b = append(b, o.ID[:]...)
		b = binary.AppendUvarint(b, uint64(o.Length))
	}
	sum := blake3.Sum256(b)
	return append(b, sum[:]...), nil
}

// ParsePackIndex decodes an index strictly, like manifest.Parse: magic, version,
// checksum, minimal uvarints, known kinds, no trailing bytes.
func ParsePackIndex(b []byte) (*PackIndex, error) {
	x, err := parsePackIndex(b)
	if err != nil {
		return nil, fmt.Errorf("parsing pack index: %w", err)
	}
	return x, nil
}

func parsePackIndex(b []byte) (*PackIndex, error) {
	hdr := len(packIndexMagic) + 1 + 32
	if len(b) < hdr+1+32 || string(b[:len(packIndexMagic)]) != packIndexMagic {
		return nil, errors.New("missing magic " + packIndexMagic)
	}
	if v := b[len(packIndexMagic)]; v != packIndexVersion {
		return nil, fmt.Errorf("unsupported version %d, want %d", v, packIndexVersion)
	}
	body, trailer := b[:len(b)-32], b[len(b)-32:]
	if sum := blake3.Sum256(body); string(sum[:]) != string(trailer) {
		return nil, errors.New("checksum mismatch: truncated or corrupted")
	}
	x := &PackIndex{}
	copy(x.Pack[:], body[len(packIndexMagic)+1:])
	rest := body[hdr:]
	n, err := uvarint(&rest, math.MaxInt32)
	if err != nil {
		return nil, fmt.Errorf("object count: %w", err)
	}
	if n > uint64(len(rest)/minPackObjectLen) {
		return nil, fmt.Errorf("object count %d does not fit in the remaining %d bytes", n, len(rest))
	}
	x.Objects = make([]PackObject, n)
	for i := range x.Objects {
		o := &x.Objects[i]
		if len(rest) < 1+32 {
			return nil, fmt.Errorf("object %d: truncated", i)
		}
		o.Kind = ObjectKind(rest[0])
		if o.Kind != KindChunk && o.Kind != KindDelta {
			return nil, fmt.Errorf("object %d: unknown %s", i, o.Kind)
		}
		copy(o.ID[:], rest[1:33])
		rest = rest[33:]
		l, err := uvarint(&rest, math.MaxUint32)
		if err != nil {
			return nil, fmt.Errorf("object %d: length: %w", i, err)
		}
		if l == 0 {
			return nil, fmt.Errorf("object %d: empty", i)
		}
		o.Offset, o.Length = x.Size, uint32(l)
		x.Size += l
		if x.Size > manifest.MaxPackSize {
			return nil, fmt.Errorf("object %d ends at %d, past the largest pack", i, x.Size)
		}
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d unexpected bytes after the objects", len(rest))
	}
	return x, nil
}

func uvarint(b *[]byte, limit uint64) (uint64, error) {
	v, n := binary.Uvarint(*b)
	switch {
	case n == 0:
		return 0, errors.New("truncated")
	case n < 0:
		return 0, errors.New("overflows 64 bits")
	case n > 1 && (*b)[n-1] == 0:
		return 0, errors.New("not minimally encoded")
	case v > limit:
		return 0, fmt.Errorf("%d exceeds %d", v, limit)
	}
	*b = (*b)[n:]
	return v, nil
}

// PackBuilder collects objects into one pack in the order they are added.
type PackBuilder struct {
	data []byte
	objs []PackObject
}

// Add appends an object and returns where it lies.
func (p *PackBuilder) Add(kind ObjectKind, id chunk.ID, obj []byte) (offset uint64) {
	off := uint64(len(p.data))
	p.data = append(p.data, obj...)
	p.objs = append(p.objs, PackObject{Kind: kind, ID: id, Offset: off, Length: uint32(len(obj))})
	return off
}

// Len is the pack's size so far.
func (p *PackBuilder) Len() int { return len(p.data) }

// Objects is the number of objects added so far.
func (p *PackBuilder) Objects() int { return len(p.objs) }

// Seal returns the pack's bytes and index; the builder must not be used after.
func (p *PackBuilder) Seal() (data []byte, x *PackIndex) {
	return p.data, &PackIndex{Pack: chunk.ID(blake3.Sum256(p.data)), Size: uint64(len(p.data)), Objects: p.objs}
}

// PutPack writes a sealed pack and then its index: an index in the store means its
// pack is complete, and manifests pointing into the pack are written only after both.
func (s *Store) PutPack(ctx context.Context, data []byte, x *PackIndex) error {
	if x.Pack != chunk.ID(blake3.Sum256(data)) || x.Size != uint64(len(data)) {
		return fmt.Errorf("writing pack %s to %s: the index describes other bytes", x.Pack, s.b)
	}
	raw, err := x.MarshalBinary()
	if err != nil {
		return err
	}
	if err := s.b.Put(ctx, PackKey(x.Pack), data); err != nil {
		return fmt.Errorf("writing pack %s to %s: %w", x.Pack, s.b, err)
	}
	if err := s.b.Put(ctx, PackIndexKey(x.Pack), raw); err != nil {
		return fmt.Errorf("writing index of pack %s to %s: %w", x.Pack, s.b, err)
	}
	return nil
}

// PackIndex reads and parses the index of pack id, and checks that it is that
// pack's index.
func (s *Store) PackIndex(ctx context.Context, id chunk.ID) (*PackIndex, error) {
	raw, err := blob.ReadAll(ctx, s.b, PackIndexKey(id), maxPackIndexSize)
	if err != nil {
		return nil, fmt.Errorf("reading index of pack %s from %s: %w", id, s.b, err)
	}
	x, err := ParsePackIndex(raw)
	if err != nil {
		return nil, fmt.Errorf("index of pack %s in %s: %w", id, s.b, err)
	}
	if x.Pack != id {
		return nil, fmt.Errorf("index of pack %s in %s names pack %s", id, s.b, x.Pack)
	}
	return x, nil
}

// PackIndexes calls fn with the ID of every pack that has an index, in key order.
func (s *Store) PackIndexes(ctx context.Context, fn func(id chunk.ID) error) error {
	err := s.b.List(ctx, PackPrefix, func(key string) error {
		if id, ok := ParsePackIndexKey(key); ok {
			return fn(id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing pack indexes in %s: %w", s.b, err)
	}
	return nil
}
