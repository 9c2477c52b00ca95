package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// VerifyReport is what Verify found.
type VerifyReport struct {
	Checked      int   // chunk bodies read
	CheckedBytes int64 // their stored bytes
	Bad          []chunk.ID
	// Dangling counts index entries without a matching body, and bodies that
	// no index entry points at: leftovers no reader can use.
	Dangling int
	// CountersFixed is set when the stored chunk totals disagree with what
	// the walk counted (rewritten when repairing).
	CountersFixed bool
	Removed       int // bad chunks and dangling records removed (repair only)
}

// Clean reports whether nothing wrong was found.
func (r VerifyReport) Clean() bool {
	return len(r.Bad) == 0 && r.Dangling == 0 && !r.CountersFixed
}

// Verify re-checks every stored chunk against its ID: it decodes each
// object and hashes the bytes. With repair it removes bad chunks and
// dangling index records, and corrects the chunk totals; without it,
// nothing is written. It reads the whole file once, in storage order.
func (c *Cache) Verify(ctx context.Context, codec *chunk.Codec, repair bool) (VerifyReport, error) {
	var rep VerifyReport
	var buf []byte
	// bodies maps each body's sequence key to its chunk, to cross-check the index.
	bodies := make(map[chunk.ID][8]byte)
	var orphanBodies [][8]byte
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketChunkBody).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var sk [8]byte
			copy(sk[:], k)
			if len(v) < len(chunk.ID{}) || len(k) != 8 {
				orphanBodies = append(orphanBodies, sk)
				continue
			}
			var id chunk.ID
			copy(id[:], v)
			obj := v[len(id):]
			rep.Checked++
			rep.CheckedBytes += int64(len(obj))
			willNeed(obj)
			raw, err := codec.Open(buf[:0], id, obj, chunk.MaxChunkSize)
			if err != nil {
				rep.Bad = append(rep.Bad, id)
			} else {
				buf = raw
			}
			bodies[id] = sk
		}
		index := tx.Bucket(bucketChunkIndex)
		return index.ForEach(func(idb, seqKey []byte) error {
			var id chunk.ID
			copy(id[:], idb)
			sk, ok := bodies[id]
			if !ok || !bytes.Equal(sk[:], seqKey) {
				rep.Dangling++
			}
			return nil
		})
	})
	if err != nil {
		return rep, fmt.Errorf("verifying chunks: %w", err)
	}
	// Bodies the index does not point at.
	err = c.db.View(func(tx *bolt.Tx) error {
		index := tx.Bucket(bucketChunkIndex)
		for id, sk := range bodies {
			if !bytes.Equal(index.Get(id[:]), sk[:]) {
				orphanBodies = append(orphanBodies, sk)
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("verifying chunk index: %w", err)
	}
	rep.Dangling += len(orphanBodies)

	var wantCount, wantBytes uint64
	err = c.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		wantCount, wantBytes = getCounter(meta, keyChunkCount), getCounter(meta, keyChunkBytes)
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("reading chunk totals: %w", err)
	}
	if !repair {
		rep.CountersFixed = wantCount != uint64(rep.Checked) || wantBytes != uint64(rep.CheckedBytes)
		return rep, nil
	}
	return rep, c.repair(ctx, &rep, orphanBodies)
}

// repair removes what Verify found and recounts the chunk totals from what
// is left, all in one transaction.
func (c *Cache) repair(ctx context.Context, rep *VerifyReport, orphanBodies [][8]byte) error {
	bad := make(map[chunk.ID]bool, len(rep.Bad))
	for _, id := range rep.Bad {
		bad[id] = true
	}
	err := c.update(ctx, 1, 0, func(tx *bolt.Tx) error {
		rep.Removed = 0
		index := tx.Bucket(bucketChunkIndex)
		body := tx.Bucket(bucketChunkBody)
		for _, sk := range orphanBodies {
			if err := body.Delete(sk[:]); err != nil {
				return err
			}
			rep.Removed++
		}
		var doomedIdx [][]byte
		err := index.ForEach(func(idb, seqKey []byte) error {
			var id chunk.ID
			copy(id[:], idb)
			v := body.Get(seqKey)
			if bad[id] || v == nil || len(v) < len(id) || !bytes.Equal(v[:len(id)], idb) {
				doomedIdx = append(doomedIdx, bytes.Clone(idb))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, idb := range doomedIdx {
			if sk := index.Get(idb); sk != nil {
				if v := body.Get(sk); v != nil && bytes.Equal(v[:min(len(v), len(idb))], idb) {
					if err := body.Delete(bytes.Clone(sk)); err != nil {
						return err
					}
				}
			}
			if err := index.Delete(idb); err != nil {
				return err
			}
			rep.Removed++
		}
		// Recount from the bodies that remain.
		var count, size int64
		err = body.ForEach(func(_, v []byte) error {
			count++
			size += int64(len(v) - len(chunk.ID{}))
			return nil
		})
		if err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if int64(getCounter(meta, keyChunkCount)) != count || int64(getCounter(meta, keyChunkBytes)) != size {
			rep.CountersFixed = true
		}
		if err := addCounter(meta, keyChunkCount, count-int64(getCounter(meta, keyChunkCount))); err != nil {
			return err
		}
		return addCounter(meta, keyChunkBytes, size-int64(getCounter(meta, keyChunkBytes)))
	})
	if err != nil {
		return fmt.Errorf("repairing cache: %w", err)
	}
	return nil
}

// Compact rewrites the cache file at path without its free pages, which is
// the only way a bbolt file shrinks. It needs the file to itself (a running
// daemon holds it: ErrLocked) and is crash-safe: the copy is written beside
// the file, synced, and renamed over it, so an interruption leaves either
// the old file or the new one.
func Compact(ctx context.Context, path string, timeout time.Duration) (before, after int64, err error) {
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	src, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return 0, 0, fmt.Errorf("compacting %s: no file lock after %s: %w", path, timeout, ErrLocked)
		}
		return 0, 0, fmt.Errorf("compacting %s: %w", path, err)
	}
	defer src.Close()
	if err := src.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			return errors.New("not a shoal cache (no meta bucket)")
		}
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("compacting %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compacting %s: %w", path, err)
	}
	before = fi.Size()
	tmp := path + ".compact"
	_ = os.Remove(tmp) // a leftover from an interrupted compaction
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: timeout, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return 0, 0, fmt.Errorf("compacting %s: creating %s: %w", path, tmp, err)
	}
	done := false
	defer func() {
		if !done {
			dst.Close()
			os.Remove(tmp)
		}
	}()
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if err := bolt.Compact(dst, src, 64<<20); err != nil {
		return 0, 0, fmt.Errorf("compacting %s: %w", path, err)
	}
	if err := dst.Sync(); err != nil {
		return 0, 0, fmt.Errorf("compacting %s: syncing copy: %w", path, err)
	}
	done = true
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compacting %s: closing copy: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compacting %s: replacing the file: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	if fi, err = os.Stat(path); err != nil {
		return 0, 0, fmt.Errorf("compacting %s: %w", path, err)
	}
	return before, fi.Size(), nil
}
