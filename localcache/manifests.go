package localcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/shoal-nix/shoal"
	bolt "go.etcd.io/bbolt"
)

// PutManifest stores a manifest under key (the NAR's nix32 hash), replacing
// any previous one. The bytes are opaque here. A different manifest drops the
// verified mark, so that HasVerified can answer from the mark alone.
func (c *Cache) PutManifest(key string, data []byte) error {
	if err := checkKey("storing manifest", key); err != nil {
		return err
	}
	if data == nil {
		data = []byte{}
	}
	err := c.update(context.Background(), 1, len(data), func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketManifests)
		if old := b.Get([]byte(key)); old != nil && !bytes.Equal(old, data) {
			if err := tx.Bucket(bucketVerified).Delete([]byte(key)); err != nil {
				return err
			}
		}
		return b.Put([]byte(key), data)
	})
	if err != nil {
		return fmt.Errorf("storing manifest %s: %w", key, err)
	}
	return nil
}

// GetManifest returns a copy of the manifest stored under key, or
// shoal.ErrNotFound.
func (c *Cache) GetManifest(key string) ([]byte, error) {
	var out []byte
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketManifests).Get([]byte(key))
		if v == nil {
			return shoal.ErrNotFound
		}
		out = bytes.Clone(v)
		return nil
	})
	if err != nil {
		if errors.Is(err, shoal.ErrNotFound) {
			return nil, shoal.ErrNotFound
		}
		return nil, fmt.Errorf("reading manifest %s: %w", key, err)
	}
	return out, nil
}

// DeleteManifest removes the manifest under key together with its verified
// mark, which is meaningless without it. Deleting an absent manifest is not
// an error.
func (c *Cache) DeleteManifest(key string) error {
	if err := checkKey("deleting manifest", key); err != nil {
		return err
	}
	err := c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketManifests).Delete([]byte(key)); err != nil {
			return err
		}
		return tx.Bucket(bucketVerified).Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("deleting manifest %s: %w", key, err)
	}
	return nil
}

// MarkVerified records that the NAR under key, assembled from the manifest
// with the given digest, matched its NarHash and NarSize. Later serves of
// the same manifest may then skip re-hashing; a different manifest under
// the same key does not inherit the mark.
func (c *Cache) MarkVerified(key string, manifestDigest [32]byte) error {
	if err := checkKey("marking verified", key); err != nil {
		return err
	}
	digest := bytes.Clone(manifestDigest[:])
	err := c.update(context.Background(), 1, 0, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVerified).Put([]byte(key), digest)
	})
	if err != nil {
		return fmt.Errorf("marking NAR %s verified: %w", key, err)
	}
	return nil
}

// IsVerified reports whether MarkVerified was called for key with exactly
// this manifest digest.
func (c *Cache) IsVerified(key string, manifestDigest [32]byte) (bool, error) {
	var ok bool
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketVerified).Get([]byte(key))
		ok = bytes.Equal(v, manifestDigest[:])
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("checking verified mark of NAR %s: %w", key, err)
	}
	return ok, nil
}

// HasVerified reports whether the NAR under key has a manifest that was verified:
// two lookups, without copying or hashing the manifest (MarkVerified records the
// digest when the NAR is verified, and PutManifest drops it when the manifest
// changes).
func (c *Cache) HasVerified(key string) (bool, error) {
	var ok bool
	err := c.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketVerified).Get([]byte(key)) != nil && tx.Bucket(bucketManifests).Get([]byte(key)) != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("checking verified mark of NAR %s: %w", key, err)
	}
	return ok, nil
}

// PutPackage records that a NAR of the package called name (a store path name without
// its version) was assembled here. The daemon uses it to tell a first install, where no
// chunk can be local and a manifest is only overhead, from an upgrade.
func (c *Cache) PutPackage(name, narKey string) error {
	if err := checkKey("recording package", name); err != nil {
		return err
	}
	err := c.update(context.Background(), 1, len(narKey), func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPackages).Put([]byte(name), []byte(narKey))
	})
	if err != nil {
		return fmt.Errorf("recording package %s: %w", name, err)
	}
	return nil
}

// HasPackage reports whether any NAR of the package called name was assembled here.
func (c *Cache) HasPackage(name string) (bool, error) {
	var ok bool
	err := c.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketPackages).Get([]byte(name)) != nil
		return nil
	})
	return ok, err
}
