package localcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	bolt "go.etcd.io/bbolt"
)

// Chunk locations point into store paths of the local /nix/store: a chunk
// of an indexed path is read back from the path's files on demand instead of
// being copied into this file, so seeding costs a few dozen bytes a chunk.
//
//	location: 0x01, NAR offset (uvarint), length (uvarint), store path
//	seeded:   0x01, NAR hash (32 bytes), NAR size (uvarint), chunks (uvarint), indexed at
const (
	locationFormat byte = 1
	seededFormat   byte = 1
)

var (
	bucketLocations = []byte("locations") // chunk ID -> encoded ChunkLocation
	bucketSeeded    = []byte("seeded")    // store path -> encoded SeededPath
)

// ChunkLocation says where a chunk's bytes are in the NAR serialization of a
// store path. It is a hint, not a promise: the path may have been modified or
// collected since, so whoever reads it checks the bytes against the chunk ID.
type ChunkLocation struct {
	StorePath string
	Offset    uint64
	Length    uint32
}

// LocatedChunk is one chunk of an indexed store path.
type LocatedChunk struct {
	ID  chunk.ID
	Loc ChunkLocation
}

// SeededPath records that a store path's chunks were indexed, so the path is
// not serialized and cut again on every request.
type SeededPath struct {
	StorePath string
	// NarHash and NarSize are those of the NAR the chunks were cut from,
	// which matched the hash Nix registered for the path.
	NarHash [32]byte
	NarSize uint64
	Chunks  int
	Indexed time.Time
}

func encodeLocation(l ChunkLocation) []byte {
	b := []byte{locationFormat}
	b = binary.AppendUvarint(b, l.Offset)
	b = binary.AppendUvarint(b, uint64(l.Length))
	return appendString(b, l.StorePath)
}

func decodeLocation(v []byte) (ChunkLocation, error) {
	d := decoder{buf: v}
	var l ChunkLocation
	if f := d.byte(); f != locationFormat && d.err == nil {
		return l, fmt.Errorf("chunk location record format %d unknown", f)
	}
	l.Offset = d.uvarint()
	n := d.uvarint()
	l.StorePath = d.string()
	if d.err == nil && n > 1<<32-1 {
		d.err = fmt.Errorf("chunk length %d out of range", n)
	}
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.buf))
	}
	if d.err != nil {
		return ChunkLocation{}, fmt.Errorf("decoding chunk location: %w", d.err)
	}
	l.Length = uint32(n)
	return l, nil
}

func encodeSeeded(s SeededPath) []byte {
	b := []byte{seededFormat}
	b = append(b, s.NarHash[:]...)
	b = binary.AppendUvarint(b, s.NarSize)
	b = binary.AppendUvarint(b, uint64(s.Chunks))
	return appendTime(b, s.Indexed)
}

func decodeSeeded(storePath string, v []byte) (SeededPath, error) {
	s := SeededPath{StorePath: storePath}
	if len(v) < 1+32 || v[0] != seededFormat {
		return SeededPath{}, fmt.Errorf("decoding seeded path %s: bad record", storePath)
	}
	copy(s.NarHash[:], v[1:33])
	d := decoder{buf: v[33:]}
	s.NarSize = d.uvarint()
	s.Chunks = int(d.uvarint())
	s.Indexed = d.time()
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.buf))
	}
	if d.err != nil {
		return SeededPath{}, fmt.Errorf("decoding seeded path %s: %w", storePath, d.err)
	}
	return s, nil
}

// PutSeeded records the chunks of an indexed store path and marks the path
// seeded, in one transaction: a crash leaves either both or neither. A chunk
// already located elsewhere keeps its location; the first one found works as
// well as any, and keeping it saves the write.
func (c *Cache) PutSeeded(ctx context.Context, p SeededPath, chunks []LocatedChunk) error {
	if err := checkKey("seeded path", p.StorePath); err != nil {
		return err
	}
	err := c.update(ctx, len(chunks)+1, 0, func(tx *bolt.Tx) error {
		locs := tx.Bucket(bucketLocations)
		for _, lc := range chunks {
			if old := locs.Get(lc.ID[:]); old != nil {
				if l, err := decodeLocation(old); err == nil && l.StorePath != p.StorePath {
					continue
				}
			}
			if err := locs.Put(lc.ID[:], encodeLocation(lc.Loc)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketSeeded).Put([]byte(p.StorePath), encodeSeeded(p))
	})
	if err != nil {
		return fmt.Errorf("recording %d chunk locations of %s: %w", len(chunks), p.StorePath, err)
	}
	return nil
}

// Seeded returns the record of an indexed store path, or shoal.ErrNotFound.
func (c *Cache) Seeded(storePath string) (SeededPath, error) {
	var v []byte
	err := c.db.View(func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket(bucketSeeded).Get([]byte(storePath)))
		return nil
	})
	if err != nil {
		return SeededPath{}, fmt.Errorf("looking up seeded path %s: %w", storePath, err)
	}
	if v == nil {
		return SeededPath{}, shoal.ErrNotFound
	}
	return decodeSeeded(storePath, v)
}

// ForgetSeeded drops a path's seeded mark (not its locations, which are
// dropped one by one as they fail), so the next request indexes it afresh.
func (c *Cache) ForgetSeeded(storePath string) error {
	err := c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSeeded).Delete([]byte(storePath))
	})
	if err != nil {
		return fmt.Errorf("forgetting seeded path %s: %w", storePath, err)
	}
	return nil
}

// ChunkLocation returns where a chunk was seen in the local store, or
// shoal.ErrNotFound.
func (c *Cache) ChunkLocation(id chunk.ID) (ChunkLocation, error) {
	var v []byte
	err := c.db.View(func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket(bucketLocations).Get(id[:]))
		return nil
	})
	if err != nil {
		return ChunkLocation{}, fmt.Errorf("looking up location of chunk %s: %w", id, err)
	}
	if v == nil {
		return ChunkLocation{}, shoal.ErrNotFound
	}
	return decodeLocation(v)
}

// HasLocations reports, per ID, whether the chunk was seen in the local store.
func (c *Cache) HasLocations(ids []chunk.ID) ([]bool, error) {
	have := make([]bool, len(ids))
	err := c.db.View(func(tx *bolt.Tx) error {
		locs := tx.Bucket(bucketLocations)
		for i := range ids {
			have[i] = locs.Get(ids[i][:]) != nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("looking up locations of %d chunks: %w", len(ids), err)
	}
	return have, nil
}

// DropLocation removes a chunk's location if it still points into
// storePath: the bytes there no longer match the chunk. A location another
// reader already replaced is left alone.
func (c *Cache) DropLocation(id chunk.ID, storePath string) error {
	err := c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		locs := tx.Bucket(bucketLocations)
		v := locs.Get(id[:])
		if v == nil {
			return nil
		}
		if l, err := decodeLocation(v); err == nil && l.StorePath != storePath {
			return nil
		}
		return locs.Delete(id[:])
	})
	if err != nil {
		return fmt.Errorf("dropping location of chunk %s: %w", id, err)
	}
	return nil
}
