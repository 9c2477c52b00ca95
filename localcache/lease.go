package localcache

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
	bolt "go.etcd.io/bbolt"
)

// leases protect the chunks of NARs being served from eviction. A NAR's
// chunks are not all known when serving starts (a whole NAR is cut as it
// arrives, a manifest may be fetched later), so a lease protects three
// things: the chunk IDs added to it, every chunk stored after it was taken
// (their sequence numbers are higher than the body sequence at that
// moment), and every chunk that was put again, already present, while it
// was held, which is how a whole NAR that dedups against old chunks claims
// them.
type leases struct {
	mu      sync.Mutex
	next    uint64
	active  map[uint64]*Lease
	touched map[chunk.ID]uint64 // chunk -> body sequence when it was put again
}

// Lease keeps chunks from eviction until Release. Create it with
// Cache.Lease before the NAR's chunks are looked up.
type Lease struct {
	c     *Cache
	id    uint64
	start uint64 // body sequence when the lease was taken
	ids   map[chunk.ID]struct{}
}

// Lease starts protecting chunks for one NAR being served. Release it when
// the response ends.
func (c *Cache) Lease() (*Lease, error) {
	var start uint64
	err := c.db.View(func(tx *bolt.Tx) error {
		start = tx.Bucket(bucketChunkBody).Sequence()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("taking a chunk lease: %w", err)
	}
	ls := &c.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.active == nil {
		ls.active = make(map[uint64]*Lease)
		ls.touched = make(map[chunk.ID]uint64)
	}
	ls.next++
	l := &Lease{c: c, id: ls.next, start: start, ids: make(map[chunk.ID]struct{})}
	ls.active[l.id] = l
	return l, nil
}

// Add protects the given chunks for as long as the lease is held.
func (l *Lease) Add(ids ...chunk.ID) {
	ls := &l.c.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, id := range ids {
		l.ids[id] = struct{}{}
	}
}

// Release ends the lease; calling it again does nothing.
func (l *Lease) Release() {
	ls := &l.c.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	delete(ls.active, l.id)
	if len(ls.active) == 0 {
		clear(ls.touched)
	}
}

// ActiveLeases reports how many leases are held, for status and tests.
func (c *Cache) ActiveLeases() int {
	c.leases.mu.Lock()
	defer c.leases.mu.Unlock()
	return len(c.leases.active)
}

// protects reports whether an active lease covers the chunk stored under
// sequence seq.
func (ls *leases) protects(id chunk.ID, seq uint64) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if len(ls.active) == 0 {
		return false
	}
	minStart := ^uint64(0)
	for _, l := range ls.active {
		if _, ok := l.ids[id]; ok {
			return true
		}
		minStart = min(minStart, l.start)
	}
	if seq > minStart {
		return true
	}
	t, ok := ls.touched[id]
	return ok && t >= minStart
}

// noteExisting records, while any lease is held, the chunks of puts that are
// already stored, so the put still claims them for the NAR in flight. It
// runs inside the put's write transaction, which eviction's deletes are
// serialised with.
func (c *Cache) noteExisting(tx *bolt.Tx, puts []ChunkPut) {
	ls := &c.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if len(ls.active) == 0 {
		return
	}
	index := tx.Bucket(bucketChunkIndex)
	cur := tx.Bucket(bucketChunkBody).Sequence()
	for i := range puts {
		if index.Get(puts[i].ID[:]) != nil {
			ls.touched[puts[i].ID] = cur
		}
	}
}

func seqOf(key []byte) uint64 {
	if len(key) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(key)
}
