package serve

import (
	"container/list"
	"sync"
	"time"
)

// lru is a map bounded by the total cost of its values (bytes, roughly), evicting the
// least recently used. A zero ttl keeps entries until they are evicted.
type lru[K comparable, V any] struct {
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

func newLRU[K comparable, V any](maxCost int64, ttl time.Duration) *lru[K, V] {
	return &lru[K, V]{max: maxCost, ttl: ttl, now: time.Now, order: list.New(), entries: make(map[K]*list.Element)}
}

func (c *lru[K, V]) get(k K) (V, bool) {
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

// add stores v; a value costing more than the whole bound is not kept.
func (c *lru[K, V]) add(k K, v V, cost int64) {
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

func (c *lru[K, V]) remove(el *list.Element) {
	e := c.order.Remove(el).(*lruEntry[K, V])
	delete(c.entries, e.key)
	c.cost -= e.cost
}

// size returns the number of entries and their total cost.
func (c *lru[K, V]) size() (n int, cost int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.cost
}
