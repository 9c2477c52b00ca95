package localcache

import (
	"bytes"
	"context"
	"fmt"
	"regexp"

	bolt "go.etcd.io/bbolt"
)

// Pin keeps the chunks of one store path's NAR from eviction.
type Pin struct {
	StorePath string
	// Origin says who asked: "" for `shoal pin`, or the daemon option that
	// maintains it (for example "closure-of:/run/current-system"), so that
	// option can replace its own pins without touching the user's.
	Origin string
	// NarKey is the NAR's key once known: from a route when pinned, or from
	// the first serve of the path after. Until then the pin protects nothing
	// because nothing of the path is cached.
	NarKey string
}

const pinFormat byte = 1

var storePathRE = regexp.MustCompile(`^/nix/store/([0-9a-df-np-sv-z]{32})-[A-Za-z0-9+\-._?=]+$`)

// PinHashPart returns the hash part of a store path, or an error saying why
// the string is not one.
func PinHashPart(storePath string) (string, error) {
	m := storePathRE.FindStringSubmatch(storePath)
	if m == nil {
		return "", fmt.Errorf("%q is not a store path (/nix/store/<32-character hash>-<name>)", storePath)
	}
	return m[1], nil
}

func encodePin(p Pin) []byte {
	b := []byte{pinFormat}
	b = appendString(b, p.StorePath)
	b = appendString(b, p.Origin)
	return appendString(b, p.NarKey)
}

func decodePin(v []byte) (Pin, error) {
	d := decoder{buf: v}
	var p Pin
	if f := d.byte(); f != pinFormat && d.err == nil {
		return p, fmt.Errorf("pin record format %d unknown", f)
	}
	p.StorePath = d.string()
	p.Origin = d.string()
	p.NarKey = d.string()
	if d.err == nil && len(d.buf) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.buf))
	}
	if d.err != nil {
		return Pin{}, fmt.Errorf("decoding pin record: %w", d.err)
	}
	return p, nil
}

// Pin pins store paths for origin ("" for the user's own pins). Paths
// already pinned keep their NAR key; bad paths are refused before anything
// is written.
func (c *Cache) Pin(origin string, storePaths []string) error {
	hashes, err := hashParts(storePaths)
	if err != nil {
		return err
	}
	err = c.update(context.Background(), len(storePaths), 0, func(tx *bolt.Tx) error {
		return putPins(tx, origin, storePaths, hashes)
	})
	if err != nil {
		return fmt.Errorf("pinning %d paths: %w", len(storePaths), err)
	}
	return nil
}

// ReplacePins makes storePaths the complete set of origin's pins, dropping
// the ones no longer listed: a closure that changed leaves no stale pins.
func (c *Cache) ReplacePins(origin string, storePaths []string) error {
	if origin == "" {
		return fmt.Errorf("replacing pins: the user's pins have no origin and are never replaced wholesale")
	}
	hashes, err := hashParts(storePaths)
	if err != nil {
		return err
	}
	err = c.update(context.Background(), len(storePaths)+1, 0, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if _, err := deleteWhere(b, func(v []byte) bool {
			p, err := decodePin(v)
			return err == nil && p.Origin == origin
		}); err != nil {
			return err
		}
		return putPins(tx, origin, storePaths, hashes)
	})
	if err != nil {
		return fmt.Errorf("replacing pins of %s: %w", origin, err)
	}
	return nil
}

func hashParts(storePaths []string) ([]string, error) {
	hashes := make([]string, len(storePaths))
	for i, p := range storePaths {
		h, err := PinHashPart(p)
		if err != nil {
			return nil, err
		}
		hashes[i] = h
	}
	return hashes, nil
}

func putPins(tx *bolt.Tx, origin string, storePaths, hashes []string) error {
	b := tx.Bucket(bucketPins)
	routes, err := routesByHashPart(tx)
	if err != nil {
		return err
	}
	for i, path := range storePaths {
		p := Pin{StorePath: path, Origin: origin, NarKey: routes[hashes[i]]}
		if old := b.Get([]byte(hashes[i])); old != nil {
			if op, err := decodePin(old); err == nil && p.NarKey == "" {
				p.NarKey = op.NarKey
			}
		}
		if err := b.Put([]byte(hashes[i]), encodePin(p)); err != nil {
			return fmt.Errorf("pinning %s: %w", path, err)
		}
	}
	return nil
}

// Unpin removes the pins of the given store paths, whoever made them, and
// returns how many there were.
func (c *Cache) Unpin(storePaths []string) (int, error) {
	hashes, err := hashParts(storePaths)
	if err != nil {
		return 0, err
	}
	var n int
	err = c.update(context.Background(), len(storePaths), 0, func(tx *bolt.Tx) error {
		n = 0
		b := tx.Bucket(bucketPins)
		for _, h := range hashes {
			if b.Get([]byte(h)) == nil {
				continue
			}
			if err := b.Delete([]byte(h)); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("unpinning %d paths: %w", len(storePaths), err)
	}
	return n, nil
}

// Pins lists every pin, sorted by store path hash.
func (c *Cache) Pins() ([]Pin, error) {
	var pins []Pin
	err := c.db.View(func(tx *bolt.Tx) error {
		routes, err := routesByHashPart(tx)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketPins).ForEach(func(k, v []byte) error {
			p, err := decodePin(v)
			if err != nil {
				return fmt.Errorf("pin %s: %w", k, err)
			}
			if p.NarKey == "" {
				p.NarKey = routes[string(k)]
			}
			pins = append(pins, p)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing pins: %w", err)
	}
	return pins, nil
}

// pinnedNarKeys resolves every pin to its NAR key, through the pin's own
// record or, failing that, the NAR routes.
func pinnedNarKeys(tx *bolt.Tx) (map[string]bool, error) {
	keys := make(map[string]bool)
	var routes map[string]string
	err := tx.Bucket(bucketPins).ForEach(func(k, v []byte) error {
		p, err := decodePin(v)
		if err != nil {
			return nil // Pins reports it; a damaged pin must not stop eviction
		}
		if p.NarKey == "" {
			if routes == nil {
				if routes, err = routesByHashPart(tx); err != nil {
					return err
				}
			}
			p.NarKey = routes[string(k)]
		}
		if p.NarKey != "" {
			keys[p.NarKey] = true
		}
		return nil
	})
	return keys, err
}

// routesByHashPart inverts the routes bucket: store path hash part -> NAR key.
func routesByHashPart(tx *bolt.Tx) (map[string]string, error) {
	m := make(map[string]string)
	err := tx.Bucket(bucketRoutes).ForEach(func(k, v []byte) error {
		r, err := decodeNarRoute(v)
		if err == nil {
			m[r.HashPart] = string(bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading NAR routes: %w", err)
	}
	return m, nil
}

// PinnedBytes reports the stored bytes of chunks that pins hold.
func (c *Cache) PinnedBytes(ctx context.Context) (int64, error) {
	_, pinned, err := c.evictionPlan(ctx)
	return pinned, err
}
