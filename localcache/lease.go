package localcache

import (
	"encoding/binary"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
)

// leases protect the chunks of NARs being served from eviction: exactly the chunk
// IDs added to each, and nothing else, so a client that stops reading holds on to its
// own NAR's chunks and never switches the budget off for the rest of the cache. A NAR
// whose chunks are not all known when serving starts (a whole NAR is cut as it
// arrives) adds each chunk before it is stored.
type leases struct {
	mu     sync.Mutex
	next   uint64
	active map[uint64]*Lease
}

// Lease keeps chunks from eviction until Release. Create it with Cache.Lease, and
// Add a chunk before looking it up or storing it.
type Lease struct {
	c   *Cache
	id  uint64
	ids map[chunk.ID]struct{}
}

// Lease starts protecting chunks for one NAR being served. Release it when the
// response ends.
func (c *Cache) Lease() (*Lease, error) {
	ls := &c.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.active == nil {
		ls.active = make(map[uint64]*Lease)
	}
	ls.next++
	l := &Lease{c: c, id: ls.next, ids: make(map[chunk.ID]struct{})}
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
}

// ActiveLeases reports how many leases are held, for status and tests.
func (c *Cache) ActiveLeases() int {
	c.leases.mu.Lock()
	defer c.leases.mu.Unlock()
	return len(c.leases.active)
}

// protects reports whether an active lease covers the chunk.
func (ls *leases) protects(id chunk.ID) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range ls.active {
		if _, ok := l.ids[id]; ok {
			return true
		}
	}
	return false
}

func seqOf(key []byte) uint64 {
	if len(key) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(key)
}
