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

// Key prefixes of the store's object kinds, for tools that walk the whole store.
const (
	ChunkPrefix    = "chunks/"
	DeltaPrefix    = "deltas/"
	ManifestPrefix = "manifests/"
	narInfoSuffix  = ".narinfo"
)

// RefreshChunk marks an existing chunk as just used, by setting its modification
// time to now, and reports false when the store lacks it. A publish refreshes every
// chunk it reuses, so that a garbage collection running at the same time, which
// never deletes anything younger than its grace period, spares it.
func (s *Store) RefreshChunk(ctx context.Context, id chunk.ID) (bool, error) {
	err := s.b.Touch(ctx, ChunkKey(id))
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("refreshing chunk %s in %s: %w", id, s.b, err)
	}
	return true, nil
}

// RefreshDelta is RefreshChunk for a delta object, and returns its stored size when
// the store has it: a publish reusing a delta records that size in its manifest.
func (s *Store) RefreshDelta(ctx context.Context, id chunk.ID) (size int64, ok bool, err error) {
	key := DeltaKey(id)
	if err := s.b.Touch(ctx, key); errors.Is(err, shoal.ErrNotFound) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, fmt.Errorf("refreshing delta %s in %s: %w", id, s.b, err)
	}
	info, err := s.b.Stat(ctx, key)
	if errors.Is(err, shoal.ErrNotFound) {
		return 0, false, nil // collected between the two requests
	}
	if err != nil {
		return 0, false, fmt.Errorf("refreshing delta %s in %s: %w", id, s.b, err)
	}
	return info.Size, true, nil
}

// ParseChunkKey returns the ID named by a chunk key, and false for keys that are
// not chunk objects (such as stray files).
func ParseChunkKey(key string) (chunk.ID, bool) {
	return parseFannedKey(key, ChunkPrefix, ChunkKey)
}

// ParseDeltaKey returns the delta ID named by a delta key.
func ParseDeltaKey(key string) (chunk.ID, bool) {
	return parseFannedKey(key, DeltaPrefix, DeltaKey)
}

func parseFannedKey(key, prefix string, name func(chunk.ID) string) (chunk.ID, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok || len(rest) != 2+1+64 || rest[2] != '/' {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(rest[3:])
	if err != nil || name(id) != key {
		return chunk.ID{}, false
	}
	return id, true
}

// ParseManifestKey returns the NarHash named by a manifest key.
func ParseManifestKey(key string) ([32]byte, bool) {
	rest, ok := strings.CutPrefix(key, ManifestPrefix)
	if !ok {
		return [32]byte{}, false
	}
	name, ok := strings.CutSuffix(rest, ".manifest")
	if !ok {
		return [32]byte{}, false
	}
	h, err := manifest.ParseKey(name)
	if err != nil {
		return [32]byte{}, false
	}
	return h, true
}

// ParseNarInfoKey returns the hash part named by a narinfo key at the store's root.
func ParseNarInfoKey(key string) (string, bool) {
	hp, ok := strings.CutSuffix(key, narInfoSuffix)
	if !ok || strings.Contains(hp, "/") || len(hp) != 32 {
		return "", false
	}
	return hp, true
}

// Inventory is a store's objects by kind, as one listing found them.
type Inventory struct {
	NarInfos  []string   // hash parts
	Manifests [][32]byte // NarHashes
	Chunks    []chunk.ID
	Deltas    []chunk.ID // delta IDs
	// Packs and PackIndexes are the pack files and pack indexes of a packed store,
	// by pack ID; a pack without an index is an interrupted publish's.
	Packs       []chunk.ID
	PackIndexes []chunk.ID
}

// Inventory lists every narinfo, manifest, chunk, delta and pack in the store in one pass, for the
// tools that walk all of it (gc, verify). Other keys are ignored.
func (s *Store) Inventory(ctx context.Context) (*Inventory, error) {
	var inv Inventory
	err := s.b.List(ctx, "", func(key string) error {
		if hp, ok := ParseNarInfoKey(key); ok {
			inv.NarInfos = append(inv.NarInfos, hp)
		} else if h, ok := ParseManifestKey(key); ok {
			inv.Manifests = append(inv.Manifests, h)
		} else if id, ok := ParseChunkKey(key); ok {
			inv.Chunks = append(inv.Chunks, id)
		} else if id, ok := ParseDeltaKey(key); ok {
			inv.Deltas = append(inv.Deltas, id)
		} else if id, ok := ParsePackKey(key); ok {
			inv.Packs = append(inv.Packs, id)
		} else if id, ok := ParsePackIndexKey(key); ok {
			inv.PackIndexes = append(inv.PackIndexes, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s, err)
	}
	return &inv, nil
}

// NarInfos calls fn with the hash part of every narinfo in the store. Blob backends
// list by prefix only, so this walks the whole store; publish does it once per run.
func (s *Store) NarInfos(ctx context.Context, fn func(hashPart string) error) error {
	err := s.b.List(ctx, "", func(key string) error {
		if hp, ok := ParseNarInfoKey(key); ok {
			return fn(hp)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing narinfos in %s: %w", s, err)
	}
	return nil
}
