package storegc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/store"
	"github.com/shoal-nix/shoal/substituter"
	"golang.org/x/sync/errgroup"
)

// VerifyOptions tune a verification.
type VerifyOptions struct {
	// Sample, when positive, checks this many randomly chosen chunks, manifests and
	// narinfos of each kind instead of all of them.
	Sample int
	// Jobs bounds the requests in flight; 0 means 16.
	Jobs int
	// Logger receives each problem as it is found; nil discards.
	Logger *slog.Logger
}

// VerifyReport counts what was checked and lists what was wrong.
type VerifyReport struct {
	Chunks, Manifests, NarInfos int // objects checked
	Problems                    []string
}

// maxManifestSize matches the store's own ceiling for a manifest (16 million
// entries); a larger object is reported as unreadable rather than read.
const maxManifestSize = 256 << 20

// maxProblems bounds the problems kept in a report; the rest are only counted.
const maxProblems = 1000

// Verify re-reads chunk objects and checks that they decode to their IDs, checks that
// every manifest parses, is stored under its own NarHash and names chunks the store
// holds with the stored sizes it claims, and that every narinfo parses and has its
// manifest. A problem is reported, never repaired: publishing the path again does that.
func Verify(ctx context.Context, s *store.Store, opts VerifyOptions) (VerifyReport, int, error) {
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = 16
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rep VerifyReport
	inv, err := s.Inventory(ctx)
	if err != nil {
		return rep, 0, fmt.Errorf("verify: %w", err)
	}
	narinfos, manifests, chunks := sample(inv.NarInfos, opts.Sample), sample(inv.Manifests, opts.Sample), sample(inv.Chunks, opts.Sample)
	rep.NarInfos, rep.Manifests, rep.Chunks = len(narinfos), len(manifests), len(chunks)

	codec, err := chunk.NewCodec()
	if err != nil {
		return rep, 0, err
	}
	defer codec.Close()
	var mu sync.Mutex
	problems := 0
	problem := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		log.Error("verify: " + msg)
		mu.Lock()
		defer mu.Unlock()
		problems++
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, msg)
		}
	}
	// A failure to read (as opposed to bad content) stops the run: the store, not the
	// data, is in trouble, and a report would be misleading.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, id := range chunks {
		g.Go(func() error {
			obj, err := s.Chunk(gctx, id)
			if errors.Is(err, blob.ErrNotFound) {
				return nil // collected since the listing
			}
			if err != nil {
				return err
			}
			if _, err := codec.Open(nil, id, obj, chunk.MaxChunkSize); err != nil {
				problem("chunk %s: %v", id, err)
			}
			return nil
		})
	}
	for _, h := range manifests {
		g.Go(func() error {
			raw, err := blob.ReadAll(gctx, s.Backend(), store.ManifestKey(manifest.Key(h)), maxManifestSize)
			if errors.Is(err, blob.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			m, err := manifest.Parse(raw)
			if err != nil {
				problem("manifest %s: %v", manifest.Key(h), err)
				return nil
			}
			if m.NarHash != h {
				problem("manifest %s: describes another NAR, %s", manifest.Key(h), manifest.Key(m.NarHash))
				return nil
			}
			for i, e := range m.Entries {
				info, err := s.Backend().Stat(gctx, store.ChunkKey(e.ID))
				if errors.Is(err, blob.ErrNotFound) {
					problem("manifest %s: chunk %d (%s) is missing", manifest.Key(h), i, e.ID)
					continue
				}
				if err != nil {
					return err
				}
				if info.Size != int64(e.StoredSize) {
					problem("manifest %s: chunk %d (%s) is stored in %d bytes, the manifest says %d", manifest.Key(h), i, e.ID, info.Size, e.StoredSize)
				}
			}
			return nil
		})
	}
	for _, hp := range narinfos {
		g.Go(func() error {
			raw, err := s.NarInfo(gctx, hp)
			if errors.Is(err, blob.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			ni, err := substituter.ParseNarInfo(raw)
			if err != nil {
				problem("narinfo %s: %v", hp, err)
				return nil
			}
			ok, err := s.HasManifest(gctx, ni.NarHash)
			if err != nil {
				return err
			}
			if !ok {
				problem("narinfo %s: its manifest %s is missing", hp, manifest.Key(ni.NarHash))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, problems, fmt.Errorf("verify %s: %w", s, err)
	}
	return rep, problems, nil
}

// sample returns n randomly chosen elements of keys, or all of them when n <= 0 or
// n >= len(keys).
func sample[T any](keys []T, n int) []T {
	if n <= 0 || n >= len(keys) {
		return keys
	}
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return keys[:n]
}
