package maintain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
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
	// Packs counts the pack files of a packed store read whole and checked against
	// their pack ID and index (their chunk objects count in Chunks).
	Packs int
	// Deltas counts the delta objects of the checked manifests that were decoded
	// against their base chunks. A delta whose base chunks the store no longer
	// holds (the base NAR was collected) cannot be checked here and is not counted.
	Deltas   int
	Problems []string
}

// maxManifestSize matches the store's own ceiling for a manifest (16 million
// entries); a larger object is reported as unreadable rather than read.
const maxManifestSize = 256 << 20

// maxProblems bounds the problems kept in a report; the rest are only counted.
const maxProblems = 1000

// Verify re-reads chunk objects and checks that they decode to their IDs, checks that
// every manifest parses, is stored under its own NarHash and names chunks and delta
// objects the store holds with the stored sizes it claims, that each delta decodes to
// its chunk against the base chunks the manifest names, and that every narinfo parses
// and has its manifest. A problem is reported, never repaired: publishing the path again does that.
func Verify(ctx context.Context, s *chunkstore.Store, opts VerifyOptions) (VerifyReport, int, error) {
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = 16
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rep VerifyReport
	meta, err := s.Meta(ctx)
	if err != nil && !errors.Is(err, shoal.ErrNotFound) {
		return rep, 0, fmt.Errorf("verify: %w", err)
	}
	inv, err := s.Inventory(ctx)
	if err != nil {
		return rep, 0, fmt.Errorf("verify: %w", err)
	}
	if meta != nil && meta.Packed() {
		return verifyPacked(ctx, s, inv, opts, jobs, log)
	}
	narinfos, manifests, chunks := sample(inv.NarInfos, opts.Sample), sample(inv.Manifests, opts.Sample), sample(inv.Chunks, opts.Sample)
	rep.NarInfos, rep.Manifests, rep.Chunks = len(narinfos), len(manifests), len(chunks)

	codec, err := chunk.NewCodec()
	if err != nil {
		return rep, 0, err
	}
	defer codec.Close()
	deltas := chunk.NewDeltaCodec(0, jobs)
	defer deltas.Close()
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
			if errors.Is(err, shoal.ErrNotFound) {
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
			m, err := readManifest(gctx, s, h, problem)
			if m == nil {
				return err
			}
			for i, e := range m.Entries {
				info, err := s.Backend().Stat(gctx, chunkstore.ChunkKey(e.ID))
				if errors.Is(err, shoal.ErrNotFound) {
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
			n, err := verifyDeltas(gctx, s, codec, deltas, m, func(format string, a ...any) {
				problem("manifest %s: "+format, append([]any{manifest.Key(h)}, a...)...)
			})
			mu.Lock()
			rep.Deltas += n
			mu.Unlock()
			return err
		})
	}
	for _, hp := range narinfos {
		g.Go(func() error { return verifyNarInfo(gctx, s, hp, problem) })
	}
	if err := g.Wait(); err != nil {
		return rep, problems, fmt.Errorf("verify %s: %w", s, err)
	}
	return rep, problems, nil
}

// readManifest reads and parses manifest h and checks that it names its NAR. It
// returns nil without an error for a manifest deleted meanwhile or one it reported
// as a problem.
func readManifest(ctx context.Context, s *chunkstore.Store, h [32]byte, problem func(format string, a ...any)) (*manifest.Manifest, error) {
	raw, err := blob.ReadAll(ctx, s.Backend(), chunkstore.ManifestKey(manifest.Key(h)), maxManifestSize)
	if errors.Is(err, shoal.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(raw)
	if err != nil {
		problem("manifest %s: %v", manifest.Key(h), err)
		return nil, nil
	}
	if m.NarHash != h {
		problem("manifest %s: describes another NAR, %s", manifest.Key(h), manifest.Key(m.NarHash))
		return nil, nil
	}
	return m, nil
}

// verifyNarInfo checks that narinfo hp parses and that its manifest is in the store;
// a narinfo deleted meanwhile is no problem.
func verifyNarInfo(ctx context.Context, s *chunkstore.Store, hp string, problem func(format string, a ...any)) error {
	raw, err := s.NarInfo(ctx, hp)
	if errors.Is(err, shoal.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	ni, err := nixcache.ParseNarInfo(raw)
	if err != nil {
		problem("narinfo %s: %v", hp, err)
		return nil
	}
	ok, err := s.HasManifest(ctx, ni.NarHash)
	if err != nil {
		return err
	}
	if !ok {
		problem("narinfo %s: its manifest %s is missing", hp, manifest.Key(ni.NarHash))
	}
	return nil
}

// verifyDeltas checks every delta object m names: present, of the size m says, and
// decoding to its entry's chunk against its base chunks as the store holds them. It
// returns how many it decoded. Neighbouring entries share base chunks, so the base
// chunks of the previous delta are kept for the next.
func verifyDeltas(ctx context.Context, s *chunkstore.Store, codec *chunk.Codec, deltas *chunk.DeltaCodec, m *manifest.Manifest, problem func(format string, a ...any)) (int, error) {
	return verifyDeltasWith(ctx, codec, deltas, m, problem,
		func(_ int, id chunk.ID) ([]byte, string, error) {
			obj, err := s.Delta(ctx, id)
			return obj, chunkstore.DeltaKey(id), err
		},
		func(id chunk.ID) ([]byte, error) { return s.Chunk(ctx, id) })
}

// verifyDeltasWith is verifyDeltas reading delta objects (of entry i, named id) and
// base chunk objects through the functions given, for either layout. delta also
// returns where it looked, for the report.
func verifyDeltasWith(ctx context.Context, codec *chunk.Codec, deltas *chunk.DeltaCodec, m *manifest.Manifest, problem func(format string, a ...any),
	delta func(i int, id chunk.ID) ([]byte, string, error), base func(id chunk.ID) ([]byte, error)) (int, error) {
	checked := 0
	prev := map[chunk.ID][]byte{}
	for i, e := range m.Entries {
		bases, id, size, ok := m.DeltaOf(i)
		if !ok {
			continue
		}
		obj, where, err := delta(i, id)
		if errors.Is(err, shoal.ErrNotFound) || errors.Is(err, blob.ErrRange) {
			problem("delta of chunk %d (%s) is missing: %s", i, e.ID, where)
			continue
		}
		if err != nil {
			return checked, err
		}
		if len(obj) != int(size) {
			problem("delta of chunk %d (%s) is stored in %d bytes, the manifest says %d", i, e.ID, len(obj), size)
			continue
		}
		next := make(map[chunk.ID][]byte, len(bases))
		var dict []byte
		for _, b := range bases {
			raw, ok := prev[b.ID]
			if !ok {
				bobj, err := base(b.ID)
				if errors.Is(err, shoal.ErrNotFound) {
					break // the base NAR was collected: clients may still hold it
				}
				if err != nil {
					return checked, err
				}
				if raw, err = codec.Open(nil, b.ID, bobj, int(b.Size)); err != nil {
					break // a bad chunk object, reported as such
				}
			}
			next[b.ID] = raw
			dict = append(dict, raw...)
		}
		prev = next
		if len(next) != len(uniqueIDs(bases)) {
			continue
		}
		checked++
		if _, err := deltas.OpenDelta(nil, e.ID, obj, dict, int(e.Size)); err != nil {
			problem("delta of chunk %d (%s): %v", i, e.ID, err)
		}
	}
	return checked, nil
}

func uniqueIDs(bases []manifest.BaseChunk) map[chunk.ID]bool {
	u := make(map[chunk.ID]bool, len(bases))
	for _, b := range bases {
		u[b.ID] = true
	}
	return u
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
