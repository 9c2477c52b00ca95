package chunkstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
)

// Duplicates counts the objects a packed store holds more than once, from its pack
// indexes alone (no pack is read). Copies come from workers of a sharded publish that
// each wrote a chunk outside their lineage, from publishes running at once, and from
// short runs written again (publish's MinReuseRun); every copy is valid, and a repack
// folds them.
type Duplicates struct {
	Objects     int64 // objects in all pack indexes
	Distinct    int64 // distinct (kind, ID) among them
	Extra       int64 // copies beyond the first: Objects - Distinct
	ExtraBytes  int64 // their stored size
	PackIndexes int
}

// CountDuplicates reads every pack index of the store and counts the objects found in
// more than one place. It holds one entry per distinct object in memory.
func (s *Store) CountDuplicates(ctx context.Context) (Duplicates, error) {
	type key struct {
		kind ObjectKind
		id   chunk.ID
	}
	var d Duplicates
	seen := map[key]bool{}
	var ids []chunk.ID
	if err := s.PackIndexes(ctx, func(id chunk.ID) error { ids = append(ids, id); return nil }); err != nil {
		return d, err
	}
	for _, id := range ids {
		x, err := s.PackIndex(ctx, id)
		if errors.Is(err, shoal.ErrNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return d, fmt.Errorf("counting duplicates: %w", err)
		}
		d.PackIndexes++
		for _, o := range x.Objects {
			d.Objects++
			k := key{o.Kind, o.ID}
			if seen[k] {
				d.Extra++
				d.ExtraBytes += int64(o.Length)
				continue
			}
			seen[k] = true
		}
	}
	d.Distinct = int64(len(seen))
	return d, nil
}
