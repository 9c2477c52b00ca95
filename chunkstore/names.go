package chunkstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/nixname"
)

// NamePrefix holds the package name index: for each published narinfo, an empty
// object `names/<pname>/<store path base name>`. A publish that must not list the
// whole store (a sharded one, docs/scale.md) finds the versions of a package the store
// holds, and so a NAR's delta base, with one listing of `names/<pname>/`; the key
// alone carries the version, so only the chosen base's narinfo is read.
const NamePrefix = "names/"

// NameKey names the index object of a store path (a full path or its base name), or
// fails for a name that gives no package name or cannot be a key.
func NameKey(storePath string) (string, error) {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	if _, ok := ParseNarInfoKey(base[:min(32, len(base))] + narInfoSuffix); !ok || len(base) < 34 || base[32] != '-' {
		return "", fmt.Errorf("store path %q: not <hash>-<name>", storePath)
	}
	pname, _ := nixname.Split(nixname.FromStorePath(base))
	if pname == "" {
		return "", fmt.Errorf("store path %q has no package name", storePath)
	}
	key := NamePrefix + pname + "/" + base
	if strings.Count(key, "/") != 2 {
		return "", fmt.Errorf("store path %q cannot be indexed by name", storePath)
	}
	if err := blob.ValidateKey(key); err != nil {
		return "", fmt.Errorf("store path %q cannot be indexed by name: %w", storePath, err)
	}
	return key, nil
}

// PutName records storePath in the package name index. Publish writes it after the
// manifest and before the narinfo, like the NAR URL index: an entry whose narinfo is
// absent is an interrupted publish's, and readers treat it as a miss.
func (s *Store) PutName(ctx context.Context, storePath string) error {
	key, err := NameKey(storePath)
	if err != nil {
		return err
	}
	if err := s.b.Put(ctx, key, nil); err != nil {
		return fmt.Errorf("writing name index %s to %s: %w", key, s.b, err)
	}
	return nil
}

// HasName reports whether storePath is in the package name index.
func (s *Store) HasName(ctx context.Context, storePath string) (bool, error) {
	key, err := NameKey(storePath)
	if err != nil {
		return false, err
	}
	ok, err := s.b.Exists(ctx, key)
	if err != nil {
		return false, fmt.Errorf("checking name index %s in %s: %w", key, s.b, err)
	}
	return ok, nil
}

// Names calls fn with the base name (`<hash>-<name>`) of every store path the package
// name index holds under pname: one listing, whatever the store's size.
func (s *Store) Names(ctx context.Context, pname string, fn func(base string) error) error {
	prefix := NamePrefix + pname + "/"
	if err := blob.ValidateKey(prefix + "x"); err != nil || strings.Count(prefix, "/") != 2 {
		return fmt.Errorf("package name %q cannot be looked up in the name index", pname)
	}
	err := s.b.List(ctx, prefix, func(key string) error {
		base := strings.TrimPrefix(key, prefix)
		if k, err := NameKey(base); err != nil || k != key {
			return nil // not an entry this shoal writes
		}
		return fn(base)
	})
	if err != nil {
		return fmt.Errorf("listing name index %s in %s: %w", prefix, s.b, err)
	}
	return nil
}
