package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shoal-nix/shoal"
	bolt "go.etcd.io/bbolt"
)

// RouteRetention is how long a NAR route is kept after its last use. Nix
// caches narinfos, and the NAR URLs in them, for 30 days, so a route must
// outlive any narinfo Nix may still hold.
const RouteRetention = 45 * 24 * time.Hour

// touchGranularity is how stale a route's LastUsed may get before
// TouchNarRoute writes it again. Serving a NAR then costs no write
// transaction in the common case; Prune adds the same slack so a route is
// never dropped earlier than RouteRetention after its real last use.
const touchGranularity = time.Hour

// NarInfoEntry is a cached narinfo lookup: a positive answer with the raw
// narinfo bytes, or a negative one, each valid until Expires.
type NarInfoEntry struct {
	Raw      []byte // nil for a negative entry
	Source   string // URL of the store/upstream that served it
	Negative bool
	Reason   string // for negative entries: "not found" / "unreachable: ..." (for logs)
	Expires  time.Time
}

// PutNarInfo caches e under the store path's hash part, replacing any
// previous entry.
func (c *Cache) PutNarInfo(hashPart string, e NarInfoEntry) error {
	if err := checkKey("caching narinfo", hashPart); err != nil {
		return err
	}
	if e.Negative {
		e.Raw = nil
	}
	val := encodeNarInfo(e)
	err := c.update(context.Background(), 1, len(val), func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNarInfo).Put([]byte(hashPart), val)
	})
	if err != nil {
		return fmt.Errorf("caching narinfo %s: %w", hashPart, err)
	}
	return nil
}

// GetNarInfo returns the entry cached under hashPart, or shoal.ErrNotFound when
// there is none or it expired at or before now. Expired entries stay in the
// file until Prune.
func (c *Cache) GetNarInfo(hashPart string, now time.Time) (*NarInfoEntry, error) {
	var e NarInfoEntry
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNarInfo).Get([]byte(hashPart))
		if v == nil {
			return shoal.ErrNotFound
		}
		var err error
		e, err = decodeNarInfo(v)
		return err
	})
	if err != nil {
		if errors.Is(err, shoal.ErrNotFound) {
			return nil, shoal.ErrNotFound
		}
		return nil, fmt.Errorf("reading cached narinfo %s: %w", hashPart, err)
	}
	if !now.Before(e.Expires) {
		return nil, shoal.ErrNotFound
	}
	return &e, nil
}

// HoldsNarInfo reports whether the entry cached under hashPart is, at now, a positive
// one of exactly raw from source. It reads the record in place, without copying it out
// of the file: a caller that kept what it made of raw (a parsed and verified narinfo,
// the answer sent for it) learns whether that still stands for the price of a read
// transaction, which is what a narinfo hit costs once the copies are gone.
func (c *Cache) HoldsNarInfo(hashPart string, raw []byte, source string, now time.Time) bool {
	held := false
	_ = c.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketNarInfo).Get([]byte(hashPart)); v != nil {
			held = narInfoHolds(v, raw, source, now)
		}
		return nil
	})
	return held
}

// NarRoute says where the NAR behind a URL handed to Nix comes from.
type NarRoute struct {
	HashPart  string
	StorePath string
	Source    string // URL of the cache whose narinfo gave the route
	NarSize   uint64
	LastUsed  time.Time
}

// PutNarRoute stores the route for narKey (the NarHash key in the NAR URL),
// replacing any previous one. A zero LastUsed is stored as the current time:
// a route nobody dated would otherwise be pruned at once while Nix still
// holds its URL.
func (c *Cache) PutNarRoute(narKey string, r NarRoute) error {
	if err := checkKey("storing NAR route", narKey); err != nil {
		return err
	}
	if r.LastUsed.IsZero() {
		r.LastUsed = time.Now()
	}
	val := encodeNarRoute(r)
	err := c.update(context.Background(), 1, len(val), func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRoutes).Put([]byte(narKey), val)
	})
	if err != nil {
		return fmt.Errorf("storing NAR route %s: %w", narKey, err)
	}
	return nil
}

// GetNarRoute returns the route stored for narKey, or shoal.ErrNotFound.
func (c *Cache) GetNarRoute(narKey string) (*NarRoute, error) {
	var r NarRoute
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRoutes).Get([]byte(narKey))
		if v == nil {
			return shoal.ErrNotFound
		}
		var err error
		r, err = decodeNarRoute(v)
		return err
	})
	if err != nil {
		if errors.Is(err, shoal.ErrNotFound) {
			return nil, shoal.ErrNotFound
		}
		return nil, fmt.Errorf("reading NAR route %s: %w", narKey, err)
	}
	return &r, nil
}

// TouchNarRoute records a use of the route at now, keeping it from Prune
// for another RouteRetention. It returns shoal.ErrNotFound for an unknown route.
// Touches within an hour of the recorded use are not written, so serving
// a popular NAR does not cost a write each time.
func (c *Cache) TouchNarRoute(narKey string, now time.Time) error {
	r, err := c.GetNarRoute(narKey)
	if err != nil {
		return err
	}
	if !r.LastUsed.Before(now.Add(-touchGranularity)) {
		return nil
	}
	err = c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRoutes)
		v := b.Get([]byte(narKey))
		if v == nil {
			return shoal.ErrNotFound
		}
		cur, err := decodeNarRoute(v)
		if err != nil {
			return err
		}
		if !cur.LastUsed.Before(now) {
			return nil
		}
		cur.LastUsed = now
		return b.Put([]byte(narKey), encodeNarRoute(cur))
	})
	if err != nil {
		if errors.Is(err, shoal.ErrNotFound) {
			return shoal.ErrNotFound
		}
		return fmt.Errorf("touching NAR route %s: %w", narKey, err)
	}
	return nil
}

// Prune drops narinfo entries expired at now and routes unused for
// RouteRetention, and reports how many records it removed. Records that no
// longer decode are dropped too: they could never be served.
func (c *Cache) Prune(now time.Time) (removed int, err error) {
	routeCutoff := now.Add(-(RouteRetention + touchGranularity))
	err = c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		removed = 0
		n, err := deleteWhere(tx.Bucket(bucketNarInfo), func(v []byte) bool {
			e, err := decodeNarInfo(v)
			return err != nil || !now.Before(e.Expires)
		})
		if err != nil {
			return fmt.Errorf("pruning narinfos: %w", err)
		}
		removed += n
		n, err = deleteWhere(tx.Bucket(bucketRoutes), func(v []byte) bool {
			r, err := decodeNarRoute(v)
			return err != nil || r.LastUsed.Before(routeCutoff)
		})
		if err != nil {
			return fmt.Errorf("pruning NAR routes: %w", err)
		}
		removed += n
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("pruning cache: %w", err)
	}
	return removed, nil
}

// deleteWhere deletes every key whose value matches drop. Keys are
// collected first because deleting under a live cursor skips entries.
func deleteWhere(b *bolt.Bucket, drop func(v []byte) bool) (int, error) {
	var doomed [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if drop(v) {
			doomed = append(doomed, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}
