package p2p

import (
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/lru"
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
	entries *lru.Cache[chunk.ID, []byte]
}

func newDeltaCache(limit int64) *deltaCache {
	return &deltaCache{entries: lru.New[chunk.ID, []byte](limit, 0)}
}

// get returns the cached body (nil for "not worth sending") and whether there was
// an entry.
func (c *deltaCache) get(id chunk.ID) ([]byte, bool) { return c.entries.Get(id) }

// put keeps body under id, evicting the least recently used entries to stay within
// the limit; a body larger than the whole limit is not kept.
func (c *deltaCache) put(id chunk.ID, body []byte) {
	c.entries.Add(id, body, int64(len(body))+deltaEntryOverhead)
}

// stats returns the number of entries and the bytes they are charged.
func (c *deltaCache) stats() (entries int, size int64) { return c.entries.Size() }
