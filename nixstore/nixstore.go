// Package nixstore offers the chunks of valid paths in the local /nix/store to the
// NAR fetcher (package fetch). The previous version of a package is usually on disk already, and it
// shares most of its chunks with the next one: indexing it records, per chunk ID, where
// in the path's NAR serialization the chunk lies, without copying any bytes. A chunk is
// read back from the path's files when a NAR needs it and checked against its ID, since
// the store can be modified or collected at any time.
package nixstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"golang.org/x/sync/singleflight"
)

// SourceName names the local store in logs and metrics.
const SourceName = "localstore"

// ErrNotValid means Nix does not know the path as valid: it is absent, half-written, or
// not registered, so its bytes can't stand for any NAR.
var ErrNotValid = errors.New("not a valid store path")

// Store is the local /nix/store as a chunk source. Create it with New.
type Store struct {
	fetch.NoManifests
	fetch.NoDeltas
	cache  *localcache.Cache
	params chunk.Params
	dir    string
	log    *slog.Logger
	// registeredHash returns the NAR hash Nix registered for a store path, or
	// ErrNotValid; the default asks `nix-store -q --hash`.
	registeredHash func(ctx context.Context, path string) ([32]byte, error)

	seeding singleflight.Group

	mu      sync.Mutex
	layouts map[string]*Layout // recently read paths; bounded by maxLayouts
	order   []string           // layouts' keys, oldest first
	listing storeListing
}

// maxLayouts bounds the layouts kept in memory; a NAR being assembled draws from a few
// paths at most, and a layout of a large toolchain is a few MB.
const maxLayouts = 8

// Options configures New; zero fields take defaults.
type Options struct {
	// Dir is the store directory (default /nix/store).
	Dir string
	Log *slog.Logger
	// RegisteredHash replaces `nix-store -q --hash` (for tests of stores Nix doesn't
	// manage).
	RegisteredHash func(ctx context.Context, path string) ([32]byte, error)
}

// New returns the local store source. Chunks are cut with params, which must be the
// daemon's so that IDs match the manifests it receives.
func New(cache *localcache.Cache, params chunk.Params, opts Options) (*Store, error) {
	if err := params.Validate(); err != nil {
		return nil, err
	}
	s := &Store{cache: cache, params: params, dir: opts.Dir, log: opts.Log, registeredHash: opts.RegisteredHash}
	if s.dir == "" {
		s.dir = "/nix/store"
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.registeredHash == nil {
		s.registeredHash = nixRegisteredHash
	}
	s.layouts = make(map[string]*Layout)
	return s, nil
}

var _ fetch.Source = (*Store)(nil)

// Name implements fetch.Source.
func (s *Store) Name() string { return SourceName }

// Kind implements fetch.Source: chunks read from /nix/store cost no network.
func (s *Store) Kind() fetch.Kind { return fetch.Local }

// Open implements fetch.Source: the index answers for any NAR.
func (s *Store) Open(context.Context, *manifest.Manifest) (fetch.Offer, error) { return s, nil }

// Holds reports which chunks the local store has, as far as the index knows: the
// planner counts them as free when it prices a NAR.
func (s *Store) Holds(ids []chunk.ID) ([]bool, error) { return s.cache.HasLocations(ids) }

// Chunk implements fetch.Offer: it reads the chunk from the store path its location
// names, as raw bytes. Bytes that no longer match the ID drop the location and answer
// ErrNotFound, so the fetcher goes on to the next source.
func (s *Store) Chunk(ctx context.Context, e manifest.Entry) (fetch.Object, error) {
	raw, err := s.RawChunk(ctx, e.ID)
	return fetch.Object{Raw: raw}, err
}

// Reject implements fetch.Offer. RawChunk checks what it reads and drops a location
// that no longer matches, so there is nothing left to do.
func (s *Store) Reject(chunk.ID, error) {}

// RawChunk reads chunk id's bytes where the index says they lie, and checks them.
func (s *Store) RawChunk(ctx context.Context, id chunk.ID) ([]byte, error) {
	loc, err := s.cache.ChunkLocation(id)
	if errors.Is(err, shoal.ErrNotFound) {
		return nil, fmt.Errorf("chunk %s: %w", id, shoal.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	raw, err := s.read(loc)
	if err == nil && chunk.Sum(raw) != id {
		err = fmt.Errorf("bytes at NAR offset %d differ from the chunk", loc.Offset)
	}
	if err != nil {
		s.log.Warn("local store chunk unusable; dropping its location", "chunk", id.String(), "path", loc.StorePath, "err", err)
		s.forgetLayout(loc.StorePath)
		if derr := s.cache.DropLocation(id, loc.StorePath); derr != nil {
			s.log.Warn("dropping chunk location", "err", derr)
		}
		// The path is indexed again, and so re-checked against Nix's hash, next time.
		if ferr := s.cache.ForgetSeeded(loc.StorePath); ferr != nil {
			s.log.Warn("forgetting seeded path", "err", ferr)
		}
		return nil, fmt.Errorf("chunk %s from %s: %v: %w", id, loc.StorePath, err, shoal.ErrNotFound)
	}
	return raw, nil
}

func (s *Store) read(loc localcache.ChunkLocation) ([]byte, error) {
	l, err := s.layout(loc.StorePath)
	if err != nil {
		return nil, err
	}
	if loc.Offset+uint64(loc.Length) > l.Size {
		return nil, fmt.Errorf("NAR is %d bytes now, the chunk ends at %d", l.Size, loc.Offset+uint64(loc.Length))
	}
	raw := make([]byte, loc.Length)
	if _, err := l.ReadAt(raw, int64(loc.Offset)); err != nil {
		return nil, err
	}
	return raw, nil
}

// layout returns the path's layout, from memory when it was read recently.
func (s *Store) layout(path string) (*Layout, error) {
	s.mu.Lock()
	l, ok := s.layouts[path]
	s.mu.Unlock()
	if ok {
		return l, nil
	}
	l, err := NewLayout(path)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.layouts[path]; !ok {
		s.layouts[path] = l
		s.order = append(s.order, path)
		if len(s.order) > maxLayouts {
			delete(s.layouts, s.order[0])
			s.order = s.order[1:]
		}
	}
	return l, nil
}

func (s *Store) forgetLayout(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.layouts, path)
	for i, p := range s.order {
		if p == path {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
}

// SeedResult says what Seed did with one path.
type SeedResult struct {
	StorePath string
	// Indexed is false when the path was indexed before and is still there.
	Indexed bool
	NarSize uint64
	Chunks  int
}

// Seed indexes a store path's chunks unless that was done already. The path must be
// valid to Nix, and its NAR must hash to what Nix registered for it: a modified path is
// refused rather than indexed.
func (s *Store) Seed(ctx context.Context, storePath string) (SeedResult, error) {
	storePath = filepath.Clean(storePath)
	if filepath.Dir(storePath) != s.dir {
		return SeedResult{}, fmt.Errorf("seeding %s: not a path directly in %s", storePath, s.dir)
	}
	if rec, err := s.cache.Seeded(storePath); err == nil {
		if _, err := os.Lstat(storePath); err == nil {
			return SeedResult{StorePath: storePath, NarSize: rec.NarSize, Chunks: rec.Chunks}, nil
		}
		_ = s.cache.ForgetSeeded(storePath)
	}
	v, err, _ := s.seeding.Do(storePath, func() (any, error) { return s.index(ctx, storePath) })
	if err != nil {
		return SeedResult{}, err
	}
	return v.(SeedResult), nil
}

func (s *Store) index(ctx context.Context, storePath string) (SeedResult, error) {
	start := time.Now()
	want, err := s.registeredHash(ctx, storePath)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seeding %s: %w", storePath, err)
	}
	l, err := NewLayout(storePath)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seeding %s: %w", storePath, err)
	}
	h := sha256.New()
	c, err := chunk.NewChunker(io.TeeReader(l.Reader(), h), s.params)
	if err != nil {
		return SeedResult{}, err
	}
	var chunks []localcache.LocatedChunk
	var off uint64
	for {
		if err := ctx.Err(); err != nil {
			return SeedResult{}, err
		}
		data, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return SeedResult{}, fmt.Errorf("seeding %s: %w", storePath, err)
		}
		chunks = append(chunks, localcache.LocatedChunk{ID: chunk.Sum(data), Loc: localcache.ChunkLocation{StorePath: storePath, Offset: off, Length: uint32(len(data))}})
		off += uint64(len(data))
	}
	var got [32]byte
	h.Sum(got[:0])
	if got != want || off != l.Size {
		return SeedResult{}, fmt.Errorf("seeding %s: its NAR (%d bytes) hashes to sha256:%s, Nix registered sha256:%s: the path was modified",
			storePath, off, nixbase32.EncodeToString(got[:]), nixbase32.EncodeToString(want[:]))
	}
	rec := localcache.SeededPath{StorePath: storePath, NarHash: got, NarSize: off, Chunks: len(chunks), Indexed: time.Now()}
	if err := s.cache.PutSeeded(ctx, rec, chunks); err != nil {
		return SeedResult{}, err
	}
	s.log.Info("indexed local store path", "path", storePath, "nar_bytes", off, "chunks", len(chunks), "took", time.Since(start).Round(time.Millisecond))
	return SeedResult{StorePath: storePath, Indexed: true, NarSize: off, Chunks: len(chunks)}, nil
}

// nixRegisteredHash asks Nix for the NAR hash it registered for path; Nix answers only
// for valid paths.
func nixRegisteredHash(ctx context.Context, path string) ([32]byte, error) {
	var sum [32]byte
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nix-store", "--query", "--hash", path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return sum, fmt.Errorf("%w: nix-store: %s", ErrNotValid, strings.TrimSpace(stderr.String()))
		}
		return sum, fmt.Errorf("asking nix-store for the hash of %s: %w", path, err)
	}
	return parseHash(strings.TrimSpace(string(out)))
}

// parseHash reads "sha256:" followed by nix32 or hex, the forms nix-store prints.
func parseHash(s string) ([32]byte, error) {
	var sum [32]byte
	digest, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return sum, fmt.Errorf("hash %q is not sha256", s)
	}
	var b []byte
	var err error
	switch len(digest) {
	case nixbase32.EncodedLen(32):
		b, err = nixbase32.DecodeString(digest)
	case 64:
		_, err = fmt.Sscanf(digest, "%x", &b)
	default:
		err = fmt.Errorf("digest of %d characters", len(digest))
	}
	if err != nil || len(b) != 32 {
		return sum, fmt.Errorf("parsing hash %q: %w", s, err)
	}
	copy(sum[:], b)
	return sum, nil
}
