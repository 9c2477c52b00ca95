// Package lru is a map bounded by the total cost of its values, evicting the least
// recently used, with an optional time to live. shoal serve, the daemon's fetcher
// and p2p's delta serving each keep a byte-bounded set of hot objects; this is the one
// implementation they share.
package lru

import (
	"container/list"
	"sync"
	"time"
)

// Cache is a map bounded by the total cost of its values (bytes, roughly), evicting
// the least recently used. Safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu      sync.Mutex
	max     int64
	ttl     time.Duration
	now     func() time.Time
	cost    int64
	order   *list.List // front: most recently used
	entries map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key     K
	val     V
	cost    int64
	expires time.Time
}

// New returns an empty cache holding values of at most maxCost in total. A zero ttl
// keeps entries until they are evicted; otherwise an entry expires ttl after it was
// added.
func New[K comparable, V any](maxCost int64, ttl time.Duration) *Cache[K, V] {
	return &Cache[K, V]{max: maxCost, ttl: ttl, now: time.Now, order: list.New(), entries: make(map[K]*list.Element)}
}

// Get returns the value under k and marks it as just used.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.entries[k]
	if !ok {
		return zero, false
	}
	e := el.Value.(*lruEntry[K, V])
	if c.ttl > 0 && c.now().After(e.expires) {
		c.remove(el)
		return zero, false
	}
	c.order.MoveToFront(el)
	return e.val, true
}

// Add stores v under k, replacing what was there, and evicts the least recently used
// entries until the total cost is within the bound; a value costing more than the
// whole bound is not kept.
func (c *Cache[K, V]) Add(k K, v V, cost int64) {
	if cost > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.remove(el)
	}
	e := &lruEntry[K, V]{key: k, val: v, cost: cost}
	if c.ttl > 0 {
		e.expires = c.now().Add(c.ttl)
	}
	c.entries[k] = c.order.PushFront(e)
	c.cost += cost
	for c.cost > c.max {
		c.remove(c.order.Back())
	}
}

func (c *Cache[K, V]) remove(el *list.Element) {
	e := c.order.Remove(el).(*lruEntry[K, V])
	delete(c.entries, e.key)
	c.cost -= e.cost
}

// Size returns the number of entries and their total cost.
func (c *Cache[K, V]) Size() (n int, cost int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.cost
}
