package localcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	bolt "go.etcd.io/bbolt"
)

// Eviction watermarks, as shares of the budget. Eviction starts when the
// data would pass the high mark and brings it down to the low one, so it
// runs once per tenth of the budget written rather than on every put. The
// quarter above the high mark is for free pages the file cannot reuse:
// bbolt needs a contiguous run of pages for each chunk, and small page
// allocations split the runs eviction frees. With 64 KiB chunks the file
// settled at 93% of an 8 MiB budget (TestBudgetBoundsTheFile).
const (
	highWaterPercent = 75
	lowWaterPercent  = 65
	deleteBatch      = 512
)

// DefaultBudgetPercent is the default budget's share of the file system holding the
// cache: enough for a few system upgrades' chunks on a typical disk, little enough
// that a full cache never fills it.
const DefaultBudgetPercent = 10

// DefaultBudget is DefaultBudgetPercent of the file system that holds dir (or its
// nearest existing parent, before the daemon creates it): the budget the daemon
// uses when none is given, which `shoal status` shows while it is stopped.
func DefaultBudget(dir string) (int64, error) {
	for d := dir; ; d = filepath.Dir(d) {
		var st syscall.Statfs_t
		err := syscall.Statfs(d, &st)
		if err == nil {
			return int64(st.Blocks) * int64(st.Bsize) * DefaultBudgetPercent / 100, nil
		}
		if !errors.Is(err, os.ErrNotExist) || d == filepath.Dir(d) {
			return 0, fmt.Errorf("measuring the file system of %s: %w", dir, err)
		}
	}
}

// budget is the Cache's size limit and what eviction has done.
type budget struct {
	limit        int64
	mu           sync.Mutex // one eviction at a time
	evictions    atomic.Int64
	evictedBytes atomic.Int64
	overBudget   atomic.Bool
}

// Recency. A chunk's last use is told by one logical clock, the chunk body
// sequence: a chunk is "used" when it is stored (its own sequence number)
// and whenever a NAR containing it is served (TouchNAR records the
// sequence at that moment under the NAR's key). Serving a NAR thus costs
// one small write, not one per chunk, and the order is exact between any
// two NAR uses that are separated by a stored chunk.

// TouchNAR records that the NAR under narKey is being used now, making its
// chunks the most recently used. hashPart, when not empty, is the store path
// it belongs to: a pin on that path learns its NAR key here.
func (c *Cache) TouchNAR(narKey, hashPart string) error {
	if err := checkKey("touching NAR", narKey); err != nil {
		return err
	}
	err := c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		tick := tx.Bucket(bucketChunkBody).Sequence()
		if err := tx.Bucket(bucketNarUsed).Put([]byte(narKey), binary.BigEndian.AppendUint64(nil, tick)); err != nil {
			return err
		}
		if hashPart == "" {
			return nil
		}
		pins := tx.Bucket(bucketPins)
		v := pins.Get([]byte(hashPart))
		if v == nil {
			return nil
		}
		p, err := decodePin(v)
		if err != nil || p.NarKey == narKey {
			return nil // a damaged pin is reported by Pins, not here
		}
		p.NarKey = narKey
		return pins.Put([]byte(hashPart), encodePin(p))
	})
	if err != nil {
		return fmt.Errorf("recording use of NAR %s: %w", narKey, err)
	}
	return nil
}

// Usage is how much disk the cache takes against its budget.
type Usage struct {
	FileBytes int64 // the file's size, what du sees (bbolt files never shrink)
	UsedBytes int64 // bytes in pages holding data; the rest of the file is reusable
	Budget    int64 // 0: unbounded
	// OverBudget is set when the last eviction could not get under the budget
	// because pins and NARs being served hold more than it.
	OverBudget   bool
	Evictions    int64 // chunks evicted since Open
	EvictedBytes int64
}

// Usage measures the file and its free pages.
func (c *Cache) Usage() (Usage, error) {
	var size int64
	err := c.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		return nil
	})
	if err != nil {
		return Usage{}, fmt.Errorf("measuring cache: %w", err)
	}
	fi, err := os.Stat(c.db.Path())
	if err != nil {
		return Usage{}, fmt.Errorf("measuring cache: %w", err)
	}
	free := int64(c.db.Stats().FreeAlloc)
	return Usage{
		FileBytes:    fi.Size(),
		UsedBytes:    max(size-free, 0),
		Budget:       c.budget.limit,
		OverBudget:   c.budget.overBudget.Load(),
		Evictions:    c.budget.evictions.Load(),
		EvictedBytes: c.budget.evictedBytes.Load(),
	}, nil
}

// makeRoom evicts, before incoming bytes are written, when they would carry
// the data past the high watermark, or when the file has grown to the budget
// and its free pages may not hold them. Free pages are fragmented (a chunk
// needs a contiguous run), so a file at the budget keeps twice the incoming
// bytes free.
func (c *Cache) makeRoom(ctx context.Context, incoming int64) error {
	limit := c.budget.limit
	if limit <= 0 {
		return nil
	}
	target := func(u Usage) (int64, bool) {
		low := limit * lowWaterPercent / 100
		if u.UsedBytes+incoming > limit*highWaterPercent/100 {
			return max(low-incoming, 0), true
		}
		free := u.FileBytes - u.UsedBytes
		if u.FileBytes+incoming+int64(c.db.AllocSize) > limit && free < 2*incoming {
			return max(min(low, u.UsedBytes-(2*incoming-free)-limit/20), 0), true
		}
		return 0, false
	}
	u, err := c.Usage()
	if err != nil {
		return err
	}
	if _, ok := target(u); !ok {
		return nil
	}
	c.budget.mu.Lock()
	defer c.budget.mu.Unlock()
	// Another caller may have evicted while this one waited.
	if u, err = c.Usage(); err != nil {
		return err
	}
	t, ok := target(u)
	if !ok {
		return nil
	}
	res, err := c.evictLocked(ctx, t)
	if err != nil {
		return err
	}
	if res.UsedAfter+incoming > limit {
		c.log.Warn("cache is over its budget: pinned chunks and NARs being served hold more than it",
			"budget", limit, "used", res.UsedAfter, "pinned_bytes", res.PinnedBytes, "leased_bytes", res.LeasedBytes)
	}
	return nil
}

// EvictResult says what an eviction did.
type EvictResult struct {
	Evicted       int   // chunks removed
	EvictedBytes  int64 // their stored bytes
	Manifests     int   // manifests dropped because none of their chunks is left
	PinnedBytes   int64 // stored bytes kept because pinned
	LeasedBytes   int64 // stored bytes kept because a NAR being served needs them
	UsedBefore    int64
	UsedAfter     int64
	TargetReached bool
}

// Evict removes least recently used chunks until the file's data takes at
// most target bytes, or nothing more may go. Pinned chunks and chunks of
// NARs being served (see Lease) stay; pins win over the target.
func (c *Cache) Evict(ctx context.Context, target int64) (EvictResult, error) {
	c.budget.mu.Lock()
	defer c.budget.mu.Unlock()
	return c.evictLocked(ctx, target)
}

type candidate struct {
	id     chunk.ID
	seqKey [8]byte
	seq    uint64
	rec    uint64 // last use on the body-sequence clock
	pages  int64  // bytes of pages the value occupies, what deleting it frees
	stored int64
}

func (c *Cache) evictLocked(ctx context.Context, target int64) (EvictResult, error) {
	var res EvictResult
	u, err := c.Usage()
	if err != nil {
		return res, err
	}
	res.UsedBefore, res.UsedAfter = u.UsedBytes, u.UsedBytes
	if u.UsedBytes <= target {
		res.TargetReached = true
		c.budget.overBudget.Store(false)
		return res, nil
	}
	// Two rounds: page accounting is an estimate (branch pages, the freelist),
	// so a second, smaller round finishes what the first one missed.
	for round := 0; round < 2 && res.UsedAfter > target; round++ {
		cands, pinned, err := c.evictionPlan(ctx)
		if err != nil {
			return res, err
		}
		res.PinnedBytes = pinned
		need := res.UsedAfter - target
		n, freed, leased, err := c.deleteCandidates(ctx, cands, need)
		res.Evicted += n
		res.EvictedBytes += freed
		res.LeasedBytes = leased
		if err != nil {
			return res, err
		}
		if n == 0 {
			break
		}
		if u, err = c.Usage(); err != nil {
			return res, err
		}
		res.UsedAfter = u.UsedBytes
	}
	if res.Evicted > 0 {
		m, err := c.dropEmptyManifests(ctx)
		if err != nil {
			return res, err
		}
		res.Manifests = m
		if u, err = c.Usage(); err != nil {
			return res, err
		}
		res.UsedAfter = u.UsedBytes
	}
	res.TargetReached = res.UsedAfter <= target
	c.budget.overBudget.Store(c.budget.limit > 0 && res.UsedAfter > c.budget.limit)
	c.budget.evictions.Add(int64(res.Evicted))
	c.budget.evictedBytes.Add(res.EvictedBytes)
	c.log.Info("evicted least recently used chunks", "chunks", res.Evicted, "bytes", res.EvictedBytes,
		"manifests", res.Manifests, "used_before", res.UsedBefore, "used_after", res.UsedAfter, "target", target)
	return res, nil
}

// evictionPlan lists every unpinned chunk, least recently used first, and
// the stored bytes of pinned ones.
func (c *Cache) evictionPlan(ctx context.Context) ([]candidate, int64, error) {
	var cands []candidate
	var pinnedBytes int64
	err := c.db.View(func(tx *bolt.Tx) error {
		pageSize := int64(tx.DB().Info().PageSize)
		ticks := make(map[string]uint64)
		err := tx.Bucket(bucketNarUsed).ForEach(func(k, v []byte) error {
			if len(v) == 8 {
				ticks[string(k)] = binary.BigEndian.Uint64(v)
			}
			return nil
		})
		if err != nil {
			return err
		}
		pinnedNARs, err := pinnedNarKeys(tx)
		if err != nil {
			return err
		}
		rec := make(map[chunk.ID]uint64)
		pinned := make(map[chunk.ID]bool)
		err = tx.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			m, err := manifest.Parse(v)
			if err != nil {
				c.log.Warn("eviction: skipping unreadable manifest", "nar", string(k), "err", err)
				return nil
			}
			t, isPinned := ticks[string(k)], pinnedNARs[string(k)]
			for _, e := range m.Entries {
				if rec[e.ID] < t {
					rec[e.ID] = t
				}
				if isPinned {
					pinned[e.ID] = true
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		cur := tx.Bucket(bucketChunkBody).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if len(v) < len(chunk.ID{}) || len(k) != 8 {
				continue // verify reports these
			}
			var cd candidate
			copy(cd.id[:], v)
			copy(cd.seqKey[:], k)
			cd.seq = seqOf(k)
			cd.stored = int64(len(v) - len(cd.id))
			cd.pages = (int64(len(v)) + 16 + pageSize - 1) / pageSize * pageSize
			if pinned[cd.id] {
				pinnedBytes += cd.stored
				continue
			}
			cd.rec = max(cd.seq, rec[cd.id])
			cands = append(cands, cd)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("planning eviction: %w", err)
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].rec != cands[j].rec {
			return cands[i].rec < cands[j].rec
		}
		return cands[i].seq < cands[j].seq
	})
	return cands, pinnedBytes, nil
}

// deleteCandidates removes candidates in order until need bytes of pages are
// freed, skipping those a lease protects. Protection is checked inside the
// deleting transaction, which puts are serialised with.
func (c *Cache) deleteCandidates(ctx context.Context, cands []candidate, need int64) (n int, freedStored, leasedBytes int64, err error) {
	var freedPages int64
	for len(cands) > 0 && freedPages < need {
		end := min(len(cands), deleteBatch)
		part := cands[:end]
		cands = cands[end:]
		var bn int
		var bStored, bPages, bLeased int64
		err := c.update(ctx, len(part), 0, func(tx *bolt.Tx) error {
			bn, bStored, bPages, bLeased = 0, 0, 0, 0
			index := tx.Bucket(bucketChunkIndex)
			body := tx.Bucket(bucketChunkBody)
			for i := range part {
				cd := &part[i]
				if freedPages+bPages >= need {
					break
				}
				if c.leases.protects(cd.id) {
					bLeased += cd.stored
					continue
				}
				// The chunk may have been deleted (a failed check) and put again
				// under a new sequence since the plan: then it is fresh, keep it.
				if !bytes.Equal(index.Get(cd.id[:]), cd.seqKey[:]) {
					continue
				}
				if err := body.Delete(cd.seqKey[:]); err != nil {
					return err
				}
				if err := index.Delete(cd.id[:]); err != nil {
					return err
				}
				bn++
				bStored += cd.stored
				bPages += cd.pages
			}
			meta := tx.Bucket(bucketMeta)
			if err := addCounter(meta, keyChunkCount, -int64(bn)); err != nil {
				return err
			}
			return addCounter(meta, keyChunkBytes, -bStored)
		})
		if err != nil {
			return n, freedStored, leasedBytes, fmt.Errorf("evicting chunks: %w", err)
		}
		n += bn
		freedStored += bStored
		freedPages += bPages
		leasedBytes += bLeased
	}
	return n, freedStored, leasedBytes, nil
}

// dropEmptyManifests removes manifests none of whose chunks is stored any
// more, with their verified marks and use records, so they do not pile up
// as eviction cycles through NARs.
func (c *Cache) dropEmptyManifests(ctx context.Context) (int, error) {
	var dropped int
	err := c.update(ctx, 1, 0, func(tx *bolt.Tx) error {
		dropped = 0
		index := tx.Bucket(bucketChunkIndex)
		var doomed [][]byte
		err := tx.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
			m, err := manifest.Parse(v)
			if err != nil {
				return nil
			}
			for _, e := range m.Entries {
				if index.Get(e.ID[:]) != nil {
					return nil
				}
			}
			doomed = append(doomed, bytes.Clone(k))
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range doomed {
			for _, b := range [][]byte{bucketManifests, bucketVerified, bucketNarUsed} {
				if err := tx.Bucket(b).Delete(k); err != nil {
					return err
				}
			}
		}
		dropped = len(doomed)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("dropping manifests without chunks: %w", err)
	}
	return dropped, nil
}
