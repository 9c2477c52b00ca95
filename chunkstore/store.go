// Package chunkstore reads and writes shoal's central chunk store: static files under
// one root that any HTTP server, CDN or bucket can serve. The layout is documented in
// docs/format.md; this package is the only code that knows it. Operations on a whole
// store live beside it: chunkstore/maintain (gc, verify, index) and chunkstore/retire.
package chunkstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// Keys of the store's fixed files.
const (
	CacheInfoKey = "nix-cache-info"
	MetaKey      = "shoal-store.json"
	// FormatVersion is the layout a new store gets unless asked for another: one object
	// per chunk and per delta (docs/format.md, "Store layout"). Readers refuse stores
	// with a version they do not know rather than misreading them.
	FormatVersion = 1
	// FormatPacked is layout 3: chunk and delta objects in pack files, version 3
	// manifests saying where (docs/format.md, "Store layout 3"). Its number matches
	// the manifest version it uses; no layout 2 exists.
	FormatPacked = 3

	// DefaultMaxChain is the depth bound of a new delta-primary store when the
	// publish names none (publish --max-chain).
	DefaultMaxChain = 8
	// MaxChainLimit bounds a delta-primary store's depth bound: a reader walks at
	// most that many manifests for an entry, and refuses deeper chains.
	MaxChainLimit = 64
)

// Object size ceilings: anything larger is refused before it is read into memory, so a
// hostile or broken server cannot make a reader allocate without bound.
const (
	maxNarInfoSize  = 64 << 10
	maxMetaSize     = 64 << 10
	maxManifestSize = 256 << 20
	// A zstd frame of incompressible data is a little larger than its input.
	maxChunkObjectSize = chunk.MaxChunkSize + chunk.MaxChunkSize/64 + 1<<10
	// A delta rebuilds at most chunk.MaxDeltaChunk bytes and is kept only when smaller
	// than the chunk's own object, so the same bound holds.
	maxDeltaObjectSize = chunk.MaxDeltaChunk + chunk.MaxDeltaChunk/64 + 1<<10
)

// Meta describes a store: which binary cache it was published from and the chunker
// that cut it. Chunker identity is part of the format: chunks cut differently never
// deduplicate, so a store refuses to mix chunkers.
type Meta struct {
	Version int       `json:"version"`
	Source  string    `json:"source"`
	Chunker string    `json:"chunker"`
	Created time.Time `json:"created"`
	// DeltaPrimary: a packed store whose publishes keep a new chunk that has a delta
	// against the base NAR's chunks as that delta only (version 4 manifests, docs/
	// format.md), with no entry deeper than MaxChain manifests. Every later publish
	// keeps the mode and the bound.
	DeltaPrimary bool `json:"deltaPrimary,omitempty"`
	MaxChain     int  `json:"maxChain,omitempty"`
}

// Mode is what a publish asks of a store's layout. Zero fields ask nothing: an
// existing store keeps its own, a new one gets the defaults.
type Mode struct {
	// Layout is FormatVersion or FormatPacked.
	Layout int
	// DeltaPrimary asks for a delta-primary store (packed only); MaxChain is its
	// depth bound, DefaultMaxChain when zero for a store that has none yet.
	DeltaPrimary bool
	MaxChain     int
}

// Store is a central chunk store on some blob backend.
type Store struct {
	b blob.Backend
}

// New wraps a backend.
func New(b blob.Backend) *Store { return &Store{b: b} }

// Open opens the store at rawURL (file://, a path, http(s)://).
func Open(rawURL string, client *http.Client) (*Store, error) {
	b, err := blob.Open(rawURL, client)
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", rawURL, err)
	}
	return New(b), nil
}

// String returns the store's URL.
func (s *Store) String() string { return s.b.String() }

// Backend exposes the underlying backend for tools that walk the store.
func (s *Store) Backend() blob.Backend { return s.b }

// ChunkKey names a chunk object: fan-out folders keep directories small on file systems
// and listings cheap on buckets.
func ChunkKey(id chunk.ID) string {
	h := id.String()
	return "chunks/" + h[:2] + "/" + h
}

// DeltaKey names a delta object by its chunk.DeltaID, fanned out like chunks.
func DeltaKey(id chunk.ID) string {
	h := id.String()
	return DeltaPrefix + h[:2] + "/" + h
}

// ManifestKey names the manifest of the NAR whose nix32 NarHash is narKey.
func ManifestKey(narKey string) string { return "manifests/" + narKey + ".manifest" }

// NarInfoKey names a narinfo, where Nix itself would look for it.
func NarInfoKey(hashPart string) string { return hashPart + ".narinfo" }

// Chunk returns the stored object (a zstd frame) of id. The caller checks it against id.
func (s *Store) Chunk(ctx context.Context, id chunk.ID) ([]byte, error) {
	b, err := blob.ReadAll(ctx, s.b, ChunkKey(id), maxChunkObjectSize)
	if err != nil {
		return nil, fmt.Errorf("reading chunk %s from %s: %w", id, s.b, err)
	}
	return b, nil
}

// HasChunk reports whether the store holds id.
func (s *Store) HasChunk(ctx context.Context, id chunk.ID) (bool, error) {
	ok, err := s.b.Exists(ctx, ChunkKey(id))
	if err != nil {
		return false, fmt.Errorf("checking chunk %s in %s: %w", id, s.b, err)
	}
	return ok, nil
}

// PutChunk writes a chunk object atomically.
func (s *Store) PutChunk(ctx context.Context, id chunk.ID, obj []byte) error {
	if err := s.b.Put(ctx, ChunkKey(id), obj); err != nil {
		return fmt.Errorf("writing chunk %s to %s: %w", id, s.b, err)
	}
	return nil
}

// Delta returns the stored delta object named id (a chunk.DeltaID). The caller
// decodes it against its bases, which checks it.
func (s *Store) Delta(ctx context.Context, id chunk.ID) ([]byte, error) {
	b, err := blob.ReadAll(ctx, s.b, DeltaKey(id), maxDeltaObjectSize)
	if err != nil {
		return nil, fmt.Errorf("reading delta %s from %s: %w", id, s.b, err)
	}
	return b, nil
}

// PutDelta writes a delta object atomically.
func (s *Store) PutDelta(ctx context.Context, id chunk.ID, obj []byte) error {
	if err := s.b.Put(ctx, DeltaKey(id), obj); err != nil {
		return fmt.Errorf("writing delta %s to %s: %w", id, s.b, err)
	}
	return nil
}

// Manifest reads and parses the manifest of the NAR with this NarHash, and checks that
// it describes that NAR: a manifest is untrusted until the assembled bytes match.
func (s *Store) Manifest(ctx context.Context, narHash [32]byte) (*manifest.Manifest, []byte, error) {
	key := manifest.Key(narHash)
	raw, err := blob.ReadAll(ctx, s.b, ManifestKey(key), maxManifestSize)
	if err != nil {
		return nil, nil, fmt.Errorf("reading manifest %s from %s: %w", key, s.b, err)
	}
	m, err := manifest.Parse(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing manifest %s from %s: %w", key, s.b, err)
	}
	if m.NarHash != narHash {
		return nil, nil, fmt.Errorf("manifest %s from %s describes another NAR (%s)", key, s.b, manifest.Key(m.NarHash))
	}
	return m, raw, nil
}

// HasManifest reports whether the manifest of narHash exists.
func (s *Store) HasManifest(ctx context.Context, narHash [32]byte) (bool, error) {
	return s.b.Exists(ctx, ManifestKey(manifest.Key(narHash)))
}

// PutManifest writes a manifest atomically.
func (s *Store) PutManifest(ctx context.Context, m *manifest.Manifest) error {
	raw, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding manifest %s: %w", manifest.Key(m.NarHash), err)
	}
	if err := s.b.Put(ctx, ManifestKey(manifest.Key(m.NarHash)), raw); err != nil {
		return fmt.Errorf("writing manifest %s to %s: %w", manifest.Key(m.NarHash), s.b, err)
	}
	return nil
}

// NarInfo returns a narinfo exactly as the upstream signed it.
func (s *Store) NarInfo(ctx context.Context, hashPart string) ([]byte, error) {
	raw, err := blob.ReadAll(ctx, s.b, NarInfoKey(hashPart), maxNarInfoSize)
	if err != nil {
		return nil, fmt.Errorf("reading narinfo %s from %s: %w", hashPart, s.b, err)
	}
	return raw, nil
}

// PutNarInfo writes a narinfo; it is written last, so its presence means the NAR's
// manifest and chunks are complete.
func (s *Store) PutNarInfo(ctx context.Context, hashPart string, raw []byte) error {
	if err := s.b.Put(ctx, NarInfoKey(hashPart), raw); err != nil {
		return fmt.Errorf("writing narinfo %s to %s: %w", hashPart, s.b, err)
	}
	return nil
}

// Meta reads the store's metadata file.
func (s *Store) Meta(ctx context.Context) (*Meta, error) {
	raw, err := blob.ReadAll(ctx, s.b, MetaKey, maxMetaSize)
	if err != nil {
		return nil, fmt.Errorf("reading %s from %s: %w", MetaKey, s.b, err)
	}
	var m Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("parsing %s from %s: %w", MetaKey, s.b, err)
	}
	if m.Version < 1 {
		return nil, fmt.Errorf("store %s: %s has format version %d, which no shoal writes: not a shoal store", s.b, MetaKey, m.Version)
	}
	if m.Version != FormatVersion && m.Version != FormatPacked {
		return nil, fmt.Errorf("store %s has format version %d; this shoal reads %d and %d: upgrade shoal", s.b, m.Version, FormatVersion, FormatPacked)
	}
	if _, err := chunk.ParseIdentity(m.Chunker); err != nil {
		return nil, fmt.Errorf("store %s: %w", s.b, err)
	}
	if m.DeltaPrimary && (!m.Packed() || m.MaxChain < 1 || m.MaxChain > MaxChainLimit) {
		return nil, fmt.Errorf("store %s: %s says delta-primary with layout %d and maxChain %d; want layout %d and 1 to %d", s.b, MetaKey, m.Version, m.MaxChain, FormatPacked, MaxChainLimit)
	}
	return &m, nil
}

// Packed reports whether the store keeps its objects in pack files (layout 3).
func (m *Meta) Packed() bool { return m.Version == FormatPacked }

// Init prepares a store for publishing: it writes nix-cache-info and the metadata file
// when absent, and refuses a store that was cut with another chunker or published from
// another cache, since mixing them silently ruins deduplication or provenance.
// want.Layout is the format version a new store gets (FormatVersion or FormatPacked);
// 0 takes an existing store's, or FormatVersion for a new one. An existing store of
// another layout is refused: one store holds one layout. want.DeltaPrimary makes a
// new packed store delta-primary, or an existing packed one from now on (its older
// manifests are the first keyframes); a store that is delta-primary stays so, and a
// want.MaxChain other than its bound is refused, since chains already written were
// cut to that bound.
func (s *Store) Init(ctx context.Context, source string, p chunk.Params, want Mode, now time.Time) (*Meta, error) {
	layout := want.Layout
	if layout != 0 && layout != FormatVersion && layout != FormatPacked {
		return nil, fmt.Errorf("store layout %d: want %d or %d", layout, FormatVersion, FormatPacked)
	}
	if want.MaxChain < 0 || want.MaxChain > MaxChainLimit {
		return nil, fmt.Errorf("chain bound %d: want 1 to %d", want.MaxChain, MaxChainLimit)
	}
	m, err := s.Meta(ctx)
	switch {
	case err == nil:
		if layout != 0 && m.Version != layout {
			return nil, fmt.Errorf("store %s has layout %d, not %d: publish to it with its own layout or use a new store", s.b, m.Version, layout)
		}
		if m.Chunker != p.Identity() {
			return nil, fmt.Errorf("store %s was cut with %s, not %s: publish with the store's parameters or use a new store", s.b, m.Chunker, p.Identity())
		}
		if m.Source != source {
			return nil, fmt.Errorf("store %s was published from %s, not %s: use one store per source cache", s.b, m.Source, source)
		}
		if err := s.initDeltaPrimary(ctx, m, want); err != nil {
			return nil, err
		}
	case errors.Is(err, shoal.ErrNotFound):
		if layout == 0 {
			layout = FormatVersion
		}
		if want.DeltaPrimary && layout != FormatPacked {
			return nil, fmt.Errorf("a delta-primary store is a packed one (layout %d): ask for that layout for the new store %s", FormatPacked, s.b)
		}
		if want.MaxChain != 0 && !want.DeltaPrimary {
			return nil, fmt.Errorf("a chain bound applies to a delta-primary store only, and the new store %s is not one", s.b)
		}
		m = &Meta{Version: layout, Source: source, Chunker: p.Identity(), Created: now.UTC()}
		if want.DeltaPrimary {
			m.DeltaPrimary, m.MaxChain = true, cmp.Or(want.MaxChain, DefaultMaxChain)
		}
		if err := s.putMeta(ctx, m); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	ok, err := s.b.Exists(ctx, CacheInfoKey)
	if err != nil {
		return nil, fmt.Errorf("checking %s in %s: %w", CacheInfoKey, s.b, err)
	}
	if !ok {
		// Lets a plain Nix client or a debugging human recognise the directory; the
		// daemon answers nix-cache-info itself.
		info := []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n")
		if err := s.b.Put(ctx, CacheInfoKey, info); err != nil {
			return nil, fmt.Errorf("writing %s to %s: %w", CacheInfoKey, s.b, err)
		}
	}
	return m, nil
}

// initDeltaPrimary checks what a publish asks of an existing store's mode against
// what the store says, and makes a packed store delta-primary when asked.
func (s *Store) initDeltaPrimary(ctx context.Context, m *Meta, want Mode) error {
	switch {
	case m.DeltaPrimary:
		if want.MaxChain != 0 && want.MaxChain != m.MaxChain {
			return fmt.Errorf("store %s is delta-primary with chains of at most %d, not %d: publish to it with its own bound (or none) or use a new store", s.b, m.MaxChain, want.MaxChain)
		}
		return nil
	case want.DeltaPrimary && !m.Packed():
		return fmt.Errorf("store %s has layout %d: only a packed store (layout %d) can be delta-primary", s.b, m.Version, FormatPacked)
	case want.DeltaPrimary:
		m.DeltaPrimary, m.MaxChain = true, cmp.Or(want.MaxChain, DefaultMaxChain)
		return s.putMeta(ctx, m)
	case want.MaxChain != 0:
		return fmt.Errorf("store %s is not delta-primary: a chain bound applies to a delta-primary store only", s.b)
	}
	return nil
}

func (s *Store) putMeta(ctx context.Context, m *Meta) error {
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := s.b.Put(ctx, MetaKey, append(raw, '\n')); err != nil {
		return fmt.Errorf("writing %s to %s: %w", MetaKey, s.b, err)
	}
	return nil
}

// SameNarInfo reports whether the store already holds exactly raw for hashPart, which
// means an earlier publish finished this path.
func (s *Store) SameNarInfo(ctx context.Context, hashPart string, raw []byte) (bool, error) {
	have, err := s.NarInfo(ctx, hashPart)
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return bytes.Equal(have, raw), nil
}
