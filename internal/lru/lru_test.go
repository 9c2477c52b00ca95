package lru

import (
	"testing"
	"time"
)

func TestCache(t *testing.T) {
	tests := []struct {
		name string
		max  int64
		ops  func(c *Cache[int, string])
		held []int
		gone []int
	}{
		{"least recently used out first", 3, func(c *Cache[int, string]) {
			c.Add(1, "a", 1)
			c.Add(2, "b", 1)
			c.Add(3, "c", 1)
			c.Get(1)
			c.Add(4, "d", 1)
		}, []int{1, 3, 4}, []int{2}},
		{"a costly entry evicts several", 3, func(c *Cache[int, string]) {
			c.Add(1, "a", 1)
			c.Add(2, "b", 1)
			c.Add(3, "c", 1)
			c.Add(4, "d", 2)
		}, []int{3, 4}, []int{1, 2}},
		{"an entry over the bound is not kept", 3, func(c *Cache[int, string]) {
			c.Add(1, "a", 1)
			c.Add(2, "b", 4)
		}, []int{1}, []int{2}},
		{"replacing an entry recharges it", 3, func(c *Cache[int, string]) {
			c.Add(1, "a", 2)
			c.Add(1, "a2", 1)
			c.Add(2, "b", 2)
		}, []int{1, 2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := New[int, string](tc.max, 0)
			tc.ops(c)
			for _, k := range tc.held {
				if _, ok := c.Get(k); !ok {
					t.Errorf("entry %d was evicted", k)
				}
			}
			for _, k := range tc.gone {
				if _, ok := c.Get(k); ok {
					t.Errorf("entry %d is still cached", k)
				}
			}
			if n, cost := c.Size(); cost > tc.max || n != len(tc.held) {
				t.Errorf("Size = %d entries, cost %d; want %d entries within %d", n, cost, len(tc.held), tc.max)
			}
		})
	}
}

func TestCacheExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[string, int](10, time.Minute)
	c.now = func() time.Time { return now }
	c.Add("k", 1, 1)
	now = now.Add(59 * time.Second)
	if v, ok := c.Get("k"); !ok || v != 1 {
		t.Fatalf("Get before the TTL = %d, %v", v, ok)
	}
	now = now.Add(2 * time.Second)
	if _, ok := c.Get("k"); ok {
		t.Fatal("entry outlived its TTL")
	}
	if n, cost := c.Size(); n != 0 || cost != 0 {
		t.Fatalf("expired entry still charged: %d entries, cost %d", n, cost)
	}
}
