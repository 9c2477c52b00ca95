package p2p

import (
	"container/list"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
)

// deltaEntryOverhead is what an entry costs beyond its body (key, list element, map
// slot), so that a flood of tiny or negative entries is bounded too.
const deltaEntryOverhead = 128

// deltaCache keeps the deltas a node computed for its peers, by delta ID, least
// recently used out first, within a byte bound. A fleet upgrades in a wave: the
// first peer to ask pays the encode, the others get the same bytes for a lookup.
//
// It lives in memory rather than in the daemon's bbolt cache: a delta is derived
// from chunks the node keeps anyway and costs milliseconds to recompute, it is worth
// keeping only while the wave lasts, and writing it to disk would put fsyncs and
// cache-budget accounting on the serving path for data nobody needs after a restart.
//
// An entry with a nil body records that the delta came out no smaller than the
// chunk's own object, so the node doesn't encode it again only to refuse it again.
type deltaCache struct {
	mu    sync.Mutex
	limit int64
	size  int64
	order *list.List // of *deltaEntry, most recently used first
	byID  map[chunk.ID]*list.Element
}

type deltaEntry struct {
	id   chunk.ID
	body []byte
}

func newDeltaCache(limit int64) *deltaCache {
	return &deltaCache{limit: limit, order: list.New(), byID: map[chunk.ID]*list.Element{}}
}

func (e *deltaEntry) cost() int64 { return int64(len(e.body)) + deltaEntryOverhead }

// get returns the cached body (nil for "not worth sending") and whether there was
// an entry.
func (c *deltaCache) get(id chunk.ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byID[id]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*deltaEntry).body, true
}

// put keeps body under id, evicting the least recently used entries to stay within
// the limit; a body larger than the whole limit is not kept.
func (c *deltaCache) put(id chunk.ID, body []byte) {
	e := &deltaEntry{id: id, body: body}
	if e.cost() > c.limit {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.size -= el.Value.(*deltaEntry).cost()
		c.order.Remove(el)
		delete(c.byID, id)
	}
	for c.size+e.cost() > c.limit {
		last := c.order.Back()
		old := last.Value.(*deltaEntry)
		c.size -= old.cost()
		c.order.Remove(last)
		delete(c.byID, old.id)
	}
	c.byID[id] = c.order.PushFront(e)
	c.size += e.cost()
}

// stats returns the number of entries and the bytes they are charged.
func (c *deltaCache) stats() (entries int, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byID), c.size
}
