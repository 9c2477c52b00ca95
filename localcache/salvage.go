package localcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// zstdMagic opens every zstd frame, and so every stored chunk object.
const zstdMagic = 0xFD2FB528

// SalvageReport says what Salvage kept of a damaged file.
type SalvageReport struct {
	Kept   int    // records copied into the new file
	Damage string // what was found damaged (and skipped with everything below it)
	Aside  string // where the damaged file now is
}

// Salvage copies every record it can still reach in the damaged cache file at path
// into a new file, and puts the new file in its place, the damaged one beside it.
// Pages that fail their checks are skipped with everything below them; what is
// copied is only as good as it was, so run Verify with repair next: it re-checks
// every chunk against its ID and fixes the totals and dangling records.
func Salvage(path string, timeout time.Duration) (SalvageReport, error) {
	var rep SalvageReport
	tmp := path + ".salvage"
	_ = os.Remove(tmp)
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return rep, fmt.Errorf("creating %s: %w", tmp, err)
	}
	known := map[string]bool{}
	for _, b := range allBuckets() {
		known[string(b)] = true
	}
	tx, err := db.Begin(true)
	if err == nil {
		err = initSchema(tx)
	}
	pending := 0
	put := func(buckets [][]byte, k, v []byte) {
		if err != nil || len(buckets) != 1 || !known[string(buckets[0])] {
			return
		}
		if err = tx.Bucket(buckets[0]).Put(k, v); err != nil {
			return
		}
		rep.Kept++
		// A body names its chunk: the index is rebuilt from the bodies, so chunks
		// whose index pages were lost are kept too.
		if string(buckets[0]) == string(bucketChunkBody) && len(v) >= 32 && len(k) == 8 {
			if err = tx.Bucket(bucketChunkIndex).Put(v[:32], k); err != nil {
				return
			}
		}
		if pending++; pending >= 1000 {
			if err = tx.Commit(); err == nil {
				tx, err = db.Begin(true)
			}
			pending = 0
		}
	}
	walkErr := withFileLock(path, timeout, func() error {
		return walkFile(path, put, func(k, v []byte) {
			// A leaf cut off from the tree has lost its bucket's name, but chunk
			// bodies, the bulk of the file, are recognisable: an 8-byte sequence key
			// and a value of a chunk ID and a zstd frame. Verify checks them after.
			if len(k) == 8 && len(v) >= 36 && binary.LittleEndian.Uint32(v[32:]) == zstdMagic {
				put([][]byte{bucketChunkBody}, bytes.Clone(k), bytes.Clone(v))
			}
		})
	})
	if err == nil {
		err = tx.Commit()
	} else if tx != nil {
		_ = tx.Rollback()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err == nil && walkErr != nil && !errors.Is(walkErr, ErrCorrupt) {
		err = walkErr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return rep, fmt.Errorf("salvaging %s: %w", path, err)
	}
	if walkErr != nil {
		rep.Damage = walkErr.Error()
	}
	rep.Aside = fmt.Sprintf("%s.broken-%d", path, time.Now().Unix())
	if err := os.Rename(path, rep.Aside); err != nil {
		return rep, fmt.Errorf("moving the damaged file aside: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return rep, fmt.Errorf("putting the salvaged file in place: %w", err)
	}
	return rep, nil
}
