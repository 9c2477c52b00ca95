// Package maintain keeps a central chunk store in shape: Collect deletes the narinfos
// an operator no longer wants (with their NAR URL index entries) and every manifest,
// chunk and delta object nothing kept refers to (in a packed store, by deleting and
// repacking packs); Verify re-checks chunk objects against
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
//
// # Packed stores: collection by repacking
//
// In a packed store (layout 3) an object is a range of a pack, and gc deletes packs,
// never ranges. Marking reads the kept manifests (and young ones, as above); each
// location names a pack and an offset, so the live bytes of every pack are summed from
// the manifests and the pack indexes, without reading a pack. A pack with nothing
// live goes once older than the grace period. A pack older than that whose share of
// live objects is below Options.RepackBelow is repacked: its live objects are copied,
// manifest by manifest in the order of their locations, into new packs written like
// publish's (chunkstore.PackBuilder, Store.PutPack: pack, then index), every kept
// manifest pointing into it is rewritten to point at the copies once those packs are
// written, and then a record gc/repacked/<pack> is written. The old pack stays until a
// later gc finds nothing live in it and its record older than the grace period, so a
// client holding a manifest from before the rewrite keeps reading for at least that
// long; after that, a range that is gone means: fetch the manifest again. Copies of
// one object in several packs (two publishes that ran at once, or short runs a publish
// wrote again) are folded: a rewritten manifest points at the copy in the pack with
// the most live bytes, and a pack whose live objects all have such a copy elsewhere
// is repacked by rewriting its manifests alone.
//
// The same rules as above make this safe against a concurrent publish, with packs in
// the place of chunks:
//
//   - A publish refreshes every pack of an earlier run that a manifest it is about to
//     write points into, right before writing it, and fails that NAR (a rerun
//     publishes it) if the pack is gone. Deleting looks at a pack's time again right
//     before the delete request, so a refreshed pack is young and spared; the window
//     that remains is that one round trip, as for chunks.
//   - Before deleting any pack, gc lists the manifests again and reads every one
//     written since the mark began (other than those it rewrote): a pack one of them
//     points into stays. This covers a publish whose refresh came before gc's first
//     look but whose manifest came after the mark.
//   - A manifest a publish writes during a repack, pointing into the pack being
//     repacked, is not rewritten by this run; the next gc's mark sees it, finds the pack
//     live, and repacks or keeps it instead of deleting it. A repack never deletes the
//     pack it copies from.
//   - Nothing younger than the grace period is repacked or deleted: young packs may be
//     a running publish's, whose manifests are not written yet.
//   - Packs are named by their bytes, so a pack a repack writes may have the name of
//     one it was to delete or was copying from; such a pack stays, without a record.
//
// One gc runs at a time on a store; two could rewrite one manifest each from a
// different plan.
package maintain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
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

	// RepackBelow, in a packed store, is the live share under which a pack is
	// repacked: its live objects copied to new packs and the manifests pointing into
	// it rewritten. 0 means DefaultRepackBelow; a negative value repacks nothing.
	RepackBelow float64
	// PackSize, in a packed store, is the size at which a repack closes a new pack;
	// 0 means DefaultPackSize.
	PackSize int

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
	Young int64
	// Packs is what a collection of a packed store did to its packs.
	Packs   PackReport
	Elapsed time.Duration
}

// FreedObjects is the number of objects deleted.
func (r Report) FreedObjects() int64 {
	return r.NarInfos.Deleted + r.Manifests.Deleted + r.Chunks.Deleted + r.NarURLs.Deleted + r.Deltas.Deleted + r.Packs.Deleted.Deleted
}

// FreedBytes is the number of bytes deleted.
func (r Report) FreedBytes() int64 {
	return r.NarInfos.DeletedBytes + r.Manifests.DeletedBytes + r.Chunks.DeletedBytes + r.NarURLs.DeletedBytes + r.Deltas.DeletedBytes + r.Packs.Deleted.DeletedBytes
}

// Collect marks the chunks reachable from the kept narinfos and sweeps the rest,
// deleting narinfos, then manifests, then chunks and deltas (the reverse of the write order, so
// a reader never finds a narinfo whose manifest is gone). A narinfo or manifest that
// must be kept but cannot be read or parsed stops the collection before anything is
// deleted: gc never guesses.
func Collect(ctx context.Context, s *chunkstore.Store, opts Options) (Report, error) {
	c, err := newCollector(ctx, s, opts)
	if err != nil {
		return Report{}, err
	}
	if c.packed {
		return c.collectPacked(ctx)
	}
	inv, err := s.Inventory(ctx)
	if err != nil {
		return c.rep, fmt.Errorf("gc: %w", err)
	}
	c.log.Info("gc: listed store", "store", s.String(), "narinfos", len(inv.NarInfos), "manifests", len(inv.Manifests), "chunks", len(inv.Chunks), "deltas", len(inv.Deltas))
	dead, err := c.mark(ctx, inv)
	if err != nil {
		return c.rep, err
	}
	if opts.beforeSweep != nil {
		opts.beforeSweep()
	}
	if err := c.sweep(ctx, dead); err != nil {
		return c.rep, err
	}
	c.rep.Elapsed = c.now().Sub(c.start)
	c.log.Info("gc: done", "dry_run", opts.DryRun, "objects_freed", c.rep.FreedObjects(), "bytes_freed", c.rep.FreedBytes(), "young_spared", c.rep.Young)
	return c.rep, nil
}

// collector is one gc run: what it was told, when it started, and its report.
type collector struct {
	s    *chunkstore.Store
	b    blob.Backend
	opts Options
	jobs int
	log  *slog.Logger
	now  func() time.Time
	// start and graceCutoff: objects younger than graceCutoff are never deleted, and
	// narinfos younger than start - KeepSince are kept.
	start, graceCutoff time.Time
	// packed: the store keeps its objects in packs (layout 3), collected by repacking.
	packed bool

	mu  sync.Mutex // guards rep during the parallel phases
	rep Report
}

func newCollector(ctx context.Context, s *chunkstore.Store, opts Options) (*collector, error) {
	c := &collector{s: s, b: s.Backend(), opts: opts, jobs: opts.Jobs, log: opts.Logger, now: opts.Now}
	if c.now == nil {
		c.now = time.Now
	}
	if c.jobs <= 0 {
		c.jobs = 16
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if opts.Keep == nil && opts.KeepSince <= 0 {
		return nil, errors.New("gc: nothing to keep was named: refusing to delete every narinfo (give a keep list or a keep-since duration)")
	}
	if opts.Grace < 0 {
		return nil, fmt.Errorf("gc: negative grace period %s", opts.Grace)
	}
	// The store must be one shoal knows, or its keys may mean something else.
	if meta, err := s.Meta(ctx); err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	} else {
		c.packed = meta.Packed()
	}
	if opts.RepackBelow > 1 {
		return nil, fmt.Errorf("gc: repack threshold %g above 1: every pack would be repacked on every run", opts.RepackBelow)
	}
	c.start = c.now()
	// Object stores report modification times truncated to the second (S3's
	// Last-Modified header), so a time is read as the latest instant it can stand for.
	c.graceCutoff = c.start.Add(-opts.Grace - time.Second)
	return c, nil
}

// dead is what marking found unreachable: the sweep's candidates, each looked at
// again before it goes.
type dead struct {
	narinfos  []string
	urls      map[string]string // hash part -> NAR URL, of the narinfos dropped
	manifests [][32]byte
	chunks    []chunk.ID
	deltas    []chunk.ID
}

// mark decides which narinfos are kept (listed, recent, or young), marks the
// manifests they name (and young ones, a publish in flight), and through those the
// chunks and delta objects; everything else is a candidate for the sweep.
func (c *collector) mark(ctx context.Context, inv *chunkstore.Inventory) (dead, error) {
	d := dead{urls: map[string]string{}}
	keptNars, err := c.markNarInfos(ctx, inv.NarInfos, &d)
	if err != nil {
		return d, err
	}
	marked, markedDeltas, err := c.markManifests(ctx, inv.Manifests, keptNars, &d)
	if err != nil {
		return d, err
	}
	for _, id := range inv.Chunks {
		if marked[id] {
			c.rep.Chunks.Kept++
		} else {
			d.chunks = append(d.chunks, id)
		}
	}
	for _, id := range inv.Deltas {
		if markedDeltas[id] {
			c.rep.Deltas.Kept++
		} else {
			d.deltas = append(d.deltas, id)
		}
	}
	c.log.Info("gc: marked", "narinfos_kept", c.rep.NarInfos.Kept, "manifests_kept", c.rep.Manifests.Kept, "chunks_marked", c.rep.Chunks.Kept, "chunk_candidates", len(d.chunks),
		"deltas_marked", c.rep.Deltas.Kept, "delta_candidates", len(d.deltas))
	return d, nil
}

// markNarInfos decides each narinfo and returns the NarHashes of the kept ones.
func (c *collector) markNarInfos(ctx context.Context, narinfos []string, d *dead) (map[[32]byte]bool, error) {
	opts, s := c.opts, c.s
	keptNars := map[[32]byte]bool{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	for _, hp := range narinfos {
		g.Go(func() error {
			key := chunkstore.NarInfoKey(hp)
			info, err := c.b.Stat(gctx, key)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil // deleted under us
			}
			if err != nil {
				return err
			}
			keep := (opts.Keep != nil && opts.Keep(hp)) || (opts.KeepSince > 0 && info.ModTime.After(c.start.Add(-opts.KeepSince-time.Second)))
			young := info.ModTime.After(c.graceCutoff)
			if !keep && !young {
				// Its URL names its index entry, which goes with it. A narinfo that
				// cannot be read now leaves its entry: serve treats an entry without
				// its narinfo as a miss.
				var url string
				if raw, err := s.NarInfo(gctx, hp); err == nil {
					if ni, err := nixcache.ParseNarInfo(raw); err == nil {
						url = ni.URL
					}
				}
				c.mu.Lock()
				d.narinfos = append(d.narinfos, hp)
				if url != "" {
					d.urls[hp] = url
				}
				c.mu.Unlock()
				return nil
			}
			raw, err := s.NarInfo(gctx, hp)
			if err != nil {
				return fmt.Errorf("reading kept narinfo %s: %w", hp, err)
			}
			ni, err := nixcache.ParseNarInfo(raw)
			if err != nil {
				return fmt.Errorf("parsing kept narinfo %s: %w", hp, err)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			keptNars[ni.NarHash] = true
			c.rep.NarInfos.Kept++
			c.rep.NarInfos.KeptBytes += info.Size
			if !keep {
				c.rep.Young++
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("gc: marking narinfos: %w", err)
	}
	return keptNars, nil
}

// markManifests marks the chunks and delta objects of the kept manifests (and the
// young ones, a publish in flight).
func (c *collector) markManifests(ctx context.Context, manifests [][32]byte, keptNars map[[32]byte]bool, d *dead) (marked, markedDeltas map[chunk.ID]bool, err error) {
	marked, markedDeltas = map[chunk.ID]bool{}, map[chunk.ID]bool{}
	err = c.keptManifests(ctx, manifests, keptNars, d, func(_ [32]byte, m *manifest.Manifest) {
		for i, e := range m.Entries {
			marked[e.ID] = true
			if _, id, _, ok := m.DeltaOf(i); ok {
				markedDeltas[id] = true
			}
		}
	})
	return marked, markedDeltas, err
}

// keptManifests reads every manifest a kept narinfo names or that is younger than the
// grace period (a publish in flight), counts it as kept and calls mark with c.mu held;
// the others are listed in d as dead. Both layouts mark this way; they differ only in
// what a manifest keeps alive.
//
// A kept manifest with entries stored only in its base NAR's chain (version 4, a
// delta-primary store) keeps the base NAR's manifest too, and so on down the chain,
// with everything they locate: a reader rebuilds those entries from there. The base's
// narinfo may go; its manifest stays as long as a kept NAR builds on it.
func (c *collector) keptManifests(ctx context.Context, manifests [][32]byte, keptNars map[[32]byte]bool, d *dead, mark func(h [32]byte, m *manifest.Manifest)) error {
	kept := map[[32]byte]bool{}
	var bases [][32]byte // of kept chained manifests, guarded by c.mu
	keep := func(h [32]byte, m *manifest.Manifest, size int64) {
		mark(h, m)
		kept[h] = true
		c.rep.Manifests.Kept++
		c.rep.Manifests.KeptBytes += size
		if m.Chained() {
			bases = append(bases, m.BaseNarHash)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	for _, h := range manifests {
		g.Go(func() error {
			key := chunkstore.ManifestKey(manifest.Key(h))
			info, err := c.b.Stat(gctx, key)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			keepIt := keptNars[h] // written before this phase, read-only now
			young := info.ModTime.After(c.graceCutoff)
			if !keepIt && !young {
				c.mu.Lock()
				d.manifests = append(d.manifests, h)
				c.mu.Unlock()
				return nil
			}
			m, _, err := c.s.Manifest(gctx, h)
			if err != nil {
				return fmt.Errorf("reading kept manifest: %w", err)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			keep(h, m, info.Size)
			if !keepIt {
				c.rep.Young++
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("gc: marking manifests: %w", err)
	}
	// Down the chains: each base manifest is read once, whatever number of NARs
	// build on it; a chain is a few manifests long.
	rescued := map[[32]byte]bool{}
	for len(bases) > 0 {
		h := bases[len(bases)-1]
		bases = bases[:len(bases)-1]
		if kept[h] {
			continue
		}
		key := chunkstore.ManifestKey(manifest.Key(h))
		info, err := c.b.Stat(ctx, key)
		if err == nil {
			var m *manifest.Manifest
			if m, _, err = c.s.Manifest(ctx, h); err == nil {
				keep(h, m, info.Size)
				rescued[h] = true
				continue
			}
		}
		if !errors.Is(err, shoal.ErrNotFound) {
			return fmt.Errorf("gc: reading the base manifest %s of a kept manifest's chain: %w", manifest.Key(h), err)
		}
		kept[h] = true // looked at
		c.log.Warn("gc: a kept manifest's chain names a base manifest the store lacks; its entries stored there cannot be read (run shoal store verify)", "manifest", manifest.Key(h))
	}
	if len(rescued) > 0 {
		d.manifests = slices.DeleteFunc(d.manifests, func(h [32]byte) bool { return rescued[h] })
		c.log.Info("gc: kept the manifests of dropped NARs that kept ones build on", "manifests", len(rescued))
	}
	return nil
}

// sweep deletes the dead objects in the reverse of the write order (narinfos, their
// NAR URL index entries, manifests, chunks, deltas), so a crash never leaves a kept
// object naming a deleted one.
func (c *collector) sweep(ctx context.Context, d dead) error {
	if err := c.sweepPaths(ctx, d); err != nil {
		return err
	}
	keys := make([]string, len(d.chunks))
	for i, id := range d.chunks {
		keys[i] = chunkstore.ChunkKey(id)
	}
	if err := c.sweepKeys(ctx, "chunks", keys, &c.rep.Chunks); err != nil {
		return err
	}
	keys = make([]string, len(d.deltas))
	for i, id := range d.deltas {
		keys[i] = chunkstore.DeltaKey(id)
	}
	return c.sweepKeys(ctx, "deltas", keys, &c.rep.Deltas)
}

// sweepPaths deletes the dead narinfos, their NAR URL index entries and the dead
// manifests, in that order.
func (c *collector) sweepPaths(ctx context.Context, d dead) error {
	keys := make([]string, len(d.narinfos))
	for i, hp := range d.narinfos {
		keys[i] = chunkstore.NarInfoKey(hp)
	}
	if err := c.sweepKeys(ctx, "narinfos", keys, &c.rep.NarInfos); err != nil {
		return err
	}
	// Index entries still naming a dropped narinfo (not one a publish has pointed the
	// URL to since). A narinfo spared as young was just rewritten, and so was its
	// entry, which deleteOld spares as young too.
	keys = keys[:0]
	for _, hp := range d.narinfos {
		url, ok := d.urls[hp]
		if !ok {
			continue
		}
		if names, err := c.s.NarURL(ctx, url); err == nil && names == hp {
			if key, err := chunkstore.NarURLKey(url); err == nil {
				keys = append(keys, key)
			}
		}
	}
	if err := c.sweepKeys(ctx, "NAR URL index entries", keys, &c.rep.NarURLs); err != nil {
		return err
	}
	keys = make([]string, len(d.manifests))
	for i, h := range d.manifests {
		keys[i] = chunkstore.ManifestKey(manifest.Key(h))
	}
	return c.sweepKeys(ctx, "manifests", keys, &c.rep.Manifests)
}

// deleteOld deletes key unless it is younger than the grace period: its time is looked
// at again right before it goes, since a publish may have rewritten or refreshed it.
// It returns whether it deleted and the object's size.
func (c *collector) deleteOld(ctx context.Context, key string) (bool, int64, error) {
	info, err := c.b.Stat(ctx, key)
	if errors.Is(err, shoal.ErrNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	if info.ModTime.After(c.graceCutoff) {
		return false, info.Size, nil
	}
	if c.opts.DryRun {
		return true, info.Size, nil
	}
	if err := c.b.Delete(ctx, key); err != nil {
		return false, 0, err
	}
	return true, info.Size, nil
}

// sweepKeys deletes keys in parallel and counts what went and what was spared.
func (c *collector) sweepKeys(ctx context.Context, what string, keys []string, counts *Counts) error {
	var n, freed, young, keptBytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	for _, key := range keys {
		g.Go(func() error {
			gone, size, err := c.deleteOld(gctx, key)
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
	counts.Deleted, counts.DeletedBytes = n.Load(), freed.Load()
	counts.Kept += young.Load()
	counts.KeptBytes += keptBytes.Load()
	c.rep.Young += young.Load()
	if err != nil {
		return fmt.Errorf("gc: sweeping %s: %w", what, err)
	}
	return nil
}
