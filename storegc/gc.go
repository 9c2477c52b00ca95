// Package storegc keeps a central chunk store in shape: Collect deletes the narinfos
// an operator no longer wants (with their NAR URL index entries) and every manifest,
// chunk and delta object nothing kept refers to; Verify re-checks chunk objects against
// their IDs, manifests against their chunks, and delta objects against the chunks they
// rebuild; Index writes the NAR URL index entries a store lacks.
// Both work on any writable blob backend (a directory or an S3 bucket).
//
// # Collection and concurrent publishes
//
// A publish may run while a collection does. Two rules make that safe:
//
//   - Collect never deletes an object younger than the grace period: a publish writes
//     chunks, then the manifest, then the narinfo, and everything it writes is young.
//     Manifests younger than the grace period (a publish that has not written its
//     narinfo yet) keep their chunks too.
//   - A publish refreshes every chunk and delta object it reuses (sets its modification time to now)
//     instead of only checking that it exists, and Collect looks at a chunk's
//     modification time again immediately before deleting it. A reused chunk is
//     therefore young by the time gc decides about it, or already gone, in which case
//     the publish's refresh fails and it writes the chunk anew.
//
// What remains is the time between that last look and the delete request, one round
// trip: a publish that refreshes a chunk in exactly that window loses it. The grace
// period does not shrink this window; Verify finds the result (a manifest naming a
// missing chunk), and publishing the path again repairs it.
package storegc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/store"
	"github.com/shoal-nix/shoal/substituter"
	"golang.org/x/sync/errgroup"
)

// Options choose what a collection keeps.
type Options struct {
	// Keep, when set, keeps the narinfos whose hash part it accepts.
	Keep func(hashPart string) bool
	// KeepSince, when positive, keeps narinfos written within this long.
	KeepSince time.Duration
	// Grace spares every object younger than this, whatever refers to it.
	Grace time.Duration
	// DryRun counts what would be deleted and deletes nothing.
	DryRun bool
	// Jobs bounds the requests in flight; 0 means 16.
	Jobs int
	// Logger receives a line per phase; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// beforeSweep runs between marking and sweeping; tests use it to publish into
	// the window a real collection leaves open for that.
	beforeSweep func()
}

// Counts describe one kind of object.
type Counts struct {
	Kept, Deleted int64
	KeptBytes     int64 // known for everything gc looked at closely; see Report
	DeletedBytes  int64
}

// Report is what a collection did (or, in a dry run, would have done).
type Report struct {
	NarInfos, Manifests, Chunks Counts
	// NarURLs are the NAR URL index entries of the narinfos deleted.
	NarURLs Counts
	// Deltas are delta objects: live while a kept manifest names them. The base
	// chunks they decode against are not kept for them; clients hold those.
	Deltas Counts
	// Young counts objects spared only because they are within the grace period.
	Young   int64
	Elapsed time.Duration
}

// FreedObjects is the number of objects deleted.
func (r Report) FreedObjects() int64 {
	return r.NarInfos.Deleted + r.Manifests.Deleted + r.Chunks.Deleted + r.NarURLs.Deleted + r.Deltas.Deleted
}

// FreedBytes is the number of bytes deleted.
func (r Report) FreedBytes() int64 {
	return r.NarInfos.DeletedBytes + r.Manifests.DeletedBytes + r.Chunks.DeletedBytes + r.NarURLs.DeletedBytes + r.Deltas.DeletedBytes
}

// Collect marks the chunks reachable from the kept narinfos and sweeps the rest,
// deleting narinfos, then manifests, then chunks and deltas (the reverse of the write order, so
// a reader never finds a narinfo whose manifest is gone). A narinfo or manifest that
// must be kept but cannot be read or parsed stops the collection before anything is
// deleted: gc never guesses.
func Collect(ctx context.Context, s *store.Store, opts Options) (Report, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	start := now()
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = 16
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Keep == nil && opts.KeepSince <= 0 {
		return Report{}, errors.New("gc: nothing to keep was named: refusing to delete every narinfo (give a keep list or a keep-since duration)")
	}
	if opts.Grace < 0 {
		return Report{}, fmt.Errorf("gc: negative grace period %s", opts.Grace)
	}
	b := s.Backend()
	// The store must be one shoal knows, or its keys may mean something else.
	if meta, err := s.Meta(ctx); err != nil {
		return Report{}, fmt.Errorf("gc: %w", err)
	} else if meta.Packed() {
		// Dead objects in a packed store are ranges of live packs: collecting them
		// means repacking, which this collector does not do.
		return Report{}, fmt.Errorf("gc: store %s is packed (layout %d): collecting it needs repacking, which this shoal does not do yet", s, meta.Version)
	}
	// Object stores report modification times truncated to the second (S3's
	// Last-Modified header), so a time is read as the latest instant it can stand for.
	graceCutoff := start.Add(-opts.Grace - time.Second)
	var rep Report

	inv, err := s.Inventory(ctx)
	if err != nil {
		return rep, fmt.Errorf("gc: %w", err)
	}
	narinfos, manifests, chunks := inv.NarInfos, inv.Manifests, inv.Chunks
	log.Info("gc: listed store", "store", s.String(), "narinfos", len(narinfos), "manifests", len(manifests), "chunks", len(chunks), "deltas", len(inv.Deltas))

	// Narinfos: decide, and collect the NarHashes of the kept ones.
	var mu sync.Mutex
	keptNars := map[[32]byte]bool{}
	var dropNarinfos []string
	dropURLs := map[string]string{} // hash part -> NAR URL, of the narinfos dropped
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, hp := range narinfos {
		g.Go(func() error {
			key := store.NarInfoKey(hp)
			info, err := b.Stat(gctx, key)
			if errors.Is(err, blob.ErrNotFound) {
				return nil // deleted under us
			}
			if err != nil {
				return err
			}
			keep := (opts.Keep != nil && opts.Keep(hp)) || (opts.KeepSince > 0 && info.ModTime.After(start.Add(-opts.KeepSince-time.Second)))
			young := info.ModTime.After(graceCutoff)
			if !keep && !young {
				// Its URL names its index entry, which goes with it. A narinfo that
				// cannot be read now leaves its entry: serve treats an entry without
				// its narinfo as a miss.
				var url string
				if raw, err := s.NarInfo(gctx, hp); err == nil {
					if ni, err := substituter.ParseNarInfo(raw); err == nil {
						url = ni.URL
					}
				}
				mu.Lock()
				dropNarinfos = append(dropNarinfos, hp)
				if url != "" {
					dropURLs[hp] = url
				}
				mu.Unlock()
				return nil
			}
			raw, err := s.NarInfo(gctx, hp)
			if err != nil {
				return fmt.Errorf("reading kept narinfo %s: %w", hp, err)
			}
			ni, err := substituter.ParseNarInfo(raw)
			if err != nil {
				return fmt.Errorf("parsing kept narinfo %s: %w", hp, err)
			}
			mu.Lock()
			defer mu.Unlock()
			keptNars[ni.NarHash] = true
			rep.NarInfos.Kept++
			rep.NarInfos.KeptBytes += info.Size
			if !keep {
				rep.Young++
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, fmt.Errorf("gc: marking narinfos: %w", err)
	}

	// Manifests: kept ones (and young ones, a publish in flight) mark their chunks
	// and delta objects.
	marked := map[chunk.ID]bool{}
	markedDeltas := map[chunk.ID]bool{}
	var dropManifests [][32]byte
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, h := range manifests {
		g.Go(func() error {
			key := store.ManifestKey(manifest.Key(h))
			info, err := b.Stat(gctx, key)
			if errors.Is(err, blob.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			keep := keptNars[h]
			mu.Unlock()
			young := info.ModTime.After(graceCutoff)
			if !keep && !young {
				mu.Lock()
				dropManifests = append(dropManifests, h)
				mu.Unlock()
				return nil
			}
			m, _, err := s.Manifest(gctx, h)
			if err != nil {
				return fmt.Errorf("reading kept manifest: %w", err)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, e := range m.Entries {
				marked[e.ID] = true
				if _, id, _, ok := m.DeltaOf(i); ok {
					markedDeltas[id] = true
				}
			}
			rep.Manifests.Kept++
			rep.Manifests.KeptBytes += info.Size
			if !keep {
				rep.Young++
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, fmt.Errorf("gc: marking manifests: %w", err)
	}
	var sweep []chunk.ID
	for _, id := range chunks {
		if marked[id] {
			rep.Chunks.Kept++
		} else {
			sweep = append(sweep, id)
		}
	}
	var sweepDeltas []chunk.ID
	for _, id := range inv.Deltas {
		if markedDeltas[id] {
			rep.Deltas.Kept++
		} else {
			sweepDeltas = append(sweepDeltas, id)
		}
	}
	log.Info("gc: marked", "narinfos_kept", rep.NarInfos.Kept, "manifests_kept", rep.Manifests.Kept, "chunks_marked", rep.Chunks.Kept, "chunk_candidates", len(sweep),
		"deltas_marked", rep.Deltas.Kept, "delta_candidates", len(sweepDeltas))

	if opts.beforeSweep != nil {
		opts.beforeSweep()
	}

	// Sweep, in the reverse of the write order. Each object's time is looked at
	// again right before it goes: a publish may have rewritten or refreshed it since.
	del := func(ctx context.Context, key string) (bool, int64, error) {
		info, err := b.Stat(ctx, key)
		if errors.Is(err, blob.ErrNotFound) {
			return false, 0, nil
		}
		if err != nil {
			return false, 0, err
		}
		if info.ModTime.After(graceCutoff) {
			return false, info.Size, nil
		}
		if opts.DryRun {
			return true, info.Size, nil
		}
		if err := b.Delete(ctx, key); err != nil {
			return false, 0, err
		}
		return true, info.Size, nil
	}
	sweepKeys := func(what string, keys []string, c *Counts) error {
		var n, freed, young, keptBytes atomic.Int64
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(jobs)
		for _, key := range keys {
			g.Go(func() error {
				gone, size, err := del(gctx, key)
				if err != nil {
					return fmt.Errorf("deleting %s: %w", key, err)
				}
				if gone {
					n.Add(1)
					freed.Add(size)
				} else if size > 0 {
					young.Add(1)
					keptBytes.Add(size)
				}
				return nil
			})
		}
		err := g.Wait()
		c.Deleted, c.DeletedBytes = n.Load(), freed.Load()
		c.Kept += young.Load()
		c.KeptBytes += keptBytes.Load()
		rep.Young += young.Load()
		if err != nil {
			return fmt.Errorf("gc: sweeping %s: %w", what, err)
		}
		return nil
	}
	keys := make([]string, len(dropNarinfos))
	for i, hp := range dropNarinfos {
		keys[i] = store.NarInfoKey(hp)
	}
	if err := sweepKeys("narinfos", keys, &rep.NarInfos); err != nil {
		return rep, err
	}
	// Index entries still naming a dropped narinfo (not one a publish has pointed the
	// URL to since). A narinfo spared as young was just rewritten, and so was its
	// entry, which del spares as young too.
	keys = keys[:0]
	for _, hp := range dropNarinfos {
		url, ok := dropURLs[hp]
		if !ok {
			continue
		}
		if names, err := s.NarURL(ctx, url); err == nil && names == hp {
			if key, err := store.NarURLKey(url); err == nil {
				keys = append(keys, key)
			}
		}
	}
	if err := sweepKeys("NAR URL index entries", keys, &rep.NarURLs); err != nil {
		return rep, err
	}
	keys = make([]string, len(dropManifests))
	for i, h := range dropManifests {
		keys[i] = store.ManifestKey(manifest.Key(h))
	}
	if err := sweepKeys("manifests", keys, &rep.Manifests); err != nil {
		return rep, err
	}
	keys = make([]string, len(sweep))
	for i, id := range sweep {
		keys[i] = store.ChunkKey(id)
	}
	if err := sweepKeys("chunks", keys, &rep.Chunks); err != nil {
		return rep, err
	}
	keys = make([]string, len(sweepDeltas))
	for i, id := range sweepDeltas {
		keys[i] = store.DeltaKey(id)
	}
	if err := sweepKeys("deltas", keys, &rep.Deltas); err != nil {
		return rep, err
	}
	rep.Elapsed = now().Sub(start)
	log.Info("gc: done", "dry_run", opts.DryRun, "objects_freed", rep.FreedObjects(), "bytes_freed", rep.FreedBytes(), "young_spared", rep.Young)
	return rep, nil
}
