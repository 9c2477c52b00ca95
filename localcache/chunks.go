package localcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	bolt "go.etcd.io/bbolt"
)

// ChunkPut is one chunk object to store: the zstd frame exactly as fetched.
// The caller has already checked it against ID.
type ChunkPut struct {
	ID  chunk.ID
	Obj []byte
}

// PutChunks stores objects whose IDs are not yet present; objects already
// present are skipped, so repeating a put costs a lookup and no space.
// A batch goes out in one transaction, or in several of at most 256 puts /
// 64 MiB each when larger; with a budget set, room is made by eviction
// before each. Concurrent callers may share transactions. The
// objects must not be modified until PutChunks returns.
func (c *Cache) PutChunks(ctx context.Context, puts []ChunkPut) error {
	for i := range puts {
		if len(puts[i].Obj) == 0 {
			return fmt.Errorf("storing chunk %x: empty object", puts[i].ID)
		}
	}
	for start := 0; start < len(puts); {
		end, size := start, 0
		for end < len(puts) && end-start < maxTxPuts {
			if end > start && size+len(puts[end].Obj) > maxTxBytes {
				break
			}
			size += len(puts[end].Obj)
			end++
		}
		part := puts[start:end]
		if err := c.makeRoom(ctx, int64(size)); err != nil {
			return fmt.Errorf("making room for %d chunks: %w", len(part), err)
		}
		err := c.update(ctx, len(part), size, func(tx *bolt.Tx) error {
			return putChunks(tx, part)
		})
		if err != nil {
			return fmt.Errorf("storing %d chunks: %w", len(part), err)
		}
		start = end
	}
	return nil
}

func putChunks(tx *bolt.Tx, puts []ChunkPut) error {
	index := tx.Bucket(bucketChunkIndex)
	body := tx.Bucket(bucketChunkBody)
	// Keys only ever grow at the right edge, so full pages never need
	// room for later inserts.
	body.FillPercent = 1.0
	var added, addedBytes int64
	for i := range puts {
		p := &puts[i]
		if index.Get(p.ID[:]) != nil {
			continue
		}
		seq, err := body.NextSequence()
		if err != nil {
			return fmt.Errorf("allocating sequence for chunk %x: %w", p.ID, err)
		}
		seqKey := binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
		val := make([]byte, 0, len(p.ID)+len(p.Obj))
		val = append(append(val, p.ID[:]...), p.Obj...)
		if err := body.Put(seqKey, val); err != nil {
			return fmt.Errorf("storing chunk %x: %w", p.ID, err)
		}
		if err := index.Put(p.ID[:], seqKey); err != nil {
			return fmt.Errorf("indexing chunk %x: %w", p.ID, err)
		}
		added++
		addedBytes += int64(len(p.Obj))
	}
	if added == 0 {
		return nil
	}
	meta := tx.Bucket(bucketMeta)
	if err := addCounter(meta, keyChunkCount, added); err != nil {
		return err
	}
	return addCounter(meta, keyChunkBytes, addedBytes)
}

// lookupChunk returns the chunk's body key and stored object, which point
// into the mmap and are valid only during tx.
func lookupChunk(tx *bolt.Tx, id chunk.ID) (seqKey, obj []byte, err error) {
	seqKey = tx.Bucket(bucketChunkIndex).Get(id[:])
	if seqKey == nil {
		return nil, nil, shoal.ErrNotFound
	}
	v := tx.Bucket(bucketChunkBody).Get(seqKey)
	if v == nil {
		return nil, nil, fmt.Errorf("index points at missing body %x", seqKey)
	}
	if len(v) < len(id) || !bytes.Equal(v[:len(id)], id[:]) {
		return nil, nil, fmt.Errorf("body %x does not belong to this chunk", seqKey)
	}
	return seqKey, v[len(id):], nil
}

// GetChunk returns a copy of the stored object, or shoal.ErrNotFound.
func (c *Cache) GetChunk(ctx context.Context, id chunk.ID) ([]byte, error) {
	var out []byte
	err := c.ReadChunk(ctx, id, func(obj []byte) error {
		out = bytes.Clone(obj)
		return nil
	})
	return out, err
}

// ReadChunk calls fn with the stored object, or returns shoal.ErrNotFound. obj is the
// cache file's own memory, valid only until fn returns, and must not be written: a
// caller that decodes it at once (serving a NAR) saves GetChunk's copy, and the
// garbage of one object per chunk. fn runs inside a read transaction, so it must be
// short and must not use the cache.
func (c *Cache) ReadChunk(ctx context.Context, id chunk.ID, fn func(obj []byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var fnErr error
	err := c.db.View(func(tx *bolt.Tx) error {
		_, obj, err := lookupChunk(tx, id)
		if err != nil {
			return err
		}
		willNeed(obj)
		fnErr = fn(obj)
		return nil
	})
	if err != nil {
		if errors.Is(err, shoal.ErrNotFound) {
			return shoal.ErrNotFound
		}
		return fmt.Errorf("reading chunk %x: %w", id, err)
	}
	return fnErr
}

// HasChunks reports, for each ID, whether an object is stored, using one
// read transaction for the whole list.
func (c *Cache) HasChunks(ids []chunk.ID) ([]bool, error) {
	have := make([]bool, len(ids))
	err := c.db.View(func(tx *bolt.Tx) error {
		index := tx.Bucket(bucketChunkIndex)
		for i := range ids {
			have[i] = index.Get(ids[i][:]) != nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("looking up %d chunks: %w", len(ids), err)
	}
	return have, nil
}

// DeleteChunk removes a stored object, typically one that failed
// verification, so the next request fetches it afresh. Deleting an absent
// chunk is not an error: two readers may find the same corruption.
func (c *Cache) DeleteChunk(id chunk.ID) error {
	err := c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		seqKey := tx.Bucket(bucketChunkIndex).Get(id[:])
		if seqKey == nil {
			return nil
		}
		seqKey = bytes.Clone(seqKey)
		body := tx.Bucket(bucketChunkBody)
		var size int64
		if v := body.Get(seqKey); v != nil {
			if len(v) >= len(id) {
				size = int64(len(v) - len(id))
			}
			if err := body.Delete(seqKey); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketChunkIndex).Delete(id[:]); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := addCounter(meta, keyChunkCount, -1); err != nil {
			return err
		}
		return addCounter(meta, keyChunkBytes, -size)
	})
	if err != nil {
		return fmt.Errorf("deleting chunk %x: %w", id, err)
	}
	return nil
}

// ForEachChunk calls fn for every stored object in storage order, which
// reads the file sequentially. Unlike the other methods it holds one read
// transaction for the whole walk: obj is valid only during fn, and a long
// walk delays writers whenever the file has to grow past its mapping. An
// error from fn or ctx stops the walk and is returned.
func (c *Cache) ForEachChunk(ctx context.Context, fn func(id chunk.ID, obj []byte) error) error {
	return c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketChunkBody).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var id chunk.ID
			if len(v) < len(id) {
				return fmt.Errorf("walking chunks: body %x is %d bytes, too short for an ID", k, len(v))
			}
			copy(id[:], v)
			if err := fn(id, v[len(id):]); err != nil {
				return err
			}
		}
		return nil
	})
}
