package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// RepackedPrefix holds gc's records of packs it has repacked: the pack stays, for
// clients holding a manifest that still points into it, until its record is older
// than gc's grace period.
const RepackedPrefix = "gc/repacked/"

// RepackedKey names the record of a repacked pack; the record's modification time is
// when the manifests that pointed into the pack were rewritten.
func RepackedKey(pack chunk.ID) string { return RepackedPrefix + pack.String() }

// ParseRepackedKey returns the pack a repack record names.
func ParseRepackedKey(key string) (chunk.ID, bool) {
	rest, ok := strings.CutPrefix(key, RepackedPrefix)
	if !ok || len(rest) != 64 {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(rest)
	if err != nil || RepackedKey(id) != key {
		return chunk.ID{}, false
	}
	return id, true
}

// RepackedPacks calls fn with every pack that has a repack record.
func (s *Store) RepackedPacks(ctx context.Context, fn func(id chunk.ID) error) error {
	err := s.b.List(ctx, RepackedPrefix, func(key string) error {
		if id, ok := ParseRepackedKey(key); ok {
			return fn(id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing repacked packs in %s: %w", s.b, err)
	}
	return nil
}

// RefreshPack marks a pack as just used, by setting its modification time to now, and
// reports false when the store lacks it. A publish refreshes every pack of an earlier
// run that a manifest it writes points into, so that a concurrent gc, which never
// deletes a pack younger than its grace period, spares it.
func (s *Store) RefreshPack(ctx context.Context, id chunk.ID) (bool, error) {
	err := s.b.Touch(ctx, PackKey(id))
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("refreshing pack %s in %s: %w", id, s.b, err)
	}
	return true, nil
}

// RefreshManifest sets the time of a manifest to now, as RefreshPack does for a pack:
// a publish refreshes the base manifests its manifest's chain runs through (a
// delta-primary store), so that a concurrent gc spares them even when their narinfos
// are dropped. It reports false when the manifest is gone.
func (s *Store) RefreshManifest(ctx context.Context, narHash [32]byte) (bool, error) {
	key := ManifestKey(manifest.Key(narHash))
	err := s.b.Touch(ctx, key)
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("refreshing %s in %s: %w", key, s.b, err)
	}
	return true, nil
}
