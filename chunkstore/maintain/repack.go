package maintain

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"golang.org/x/sync/errgroup"
)

// DefaultRepackBelow is Options.RepackBelow's default: a pack less than 70% live is
// repacked. On five Go toolchains (32 MiB packs, the three oldest dropped) 0.5 and
// 0.6 reclaimed 80% of the dead bytes, 0.65 and 0.7 all of them (and duplicates),
// copying 25 and 33 MB to reclaim 72 and 74 MB; copying costs the live share once,
// leaving dead bytes costs them in storage for as long as the pack lives.
const DefaultRepackBelow = 0.7

// DefaultPackSize is Options.PackSize's default, publish's own (publish.DefaultPackSize).
const DefaultPackSize = 32 << 20

// repackMaxRead bounds one ranged read of an old pack.
const repackMaxRead = 16 << 20

// repackReadGap: objects to copy less than this apart in one old pack are read with
// one ranged request, through the gap.
const repackReadGap = 64 << 10

// PackReport is what a collection of a packed store did to its packs. Sizes are of
// pack files; indexes and records are counted in the objects but not the bytes.
type PackReport struct {
	// Packs and Bytes are the packs with an index when gc listed the store.
	Packs, Bytes int64
	// LiveBytes are the bytes of the objects kept manifests point at; DeadBytes the
	// rest of Bytes.
	LiveBytes, DeadBytes int64
	// Deleted counts the pack files deleted (nothing live and older than the grace
	// period, or repacked at least one grace period ago) and those kept.
	Deleted Counts
	// Repacked packs had their live objects copied and the manifests pointing into
	// them rewritten in this run; each is deleted by the first gc one grace period
	// later. Pending are packs repacked earlier, waiting for that.
	Repacked, Pending int64
	// RepackedBytes is the size of the packs repacked.
	RepackedBytes int64
	// NewPacks and NewPackBytes were written by the repack; CopiedObjects are the
	// objects in them.
	NewPacks, NewPackBytes, CopiedObjects int64
	// ManifestsRewritten point at the copies now.
	ManifestsRewritten int64
	// ReadRequests and ReadBytes are the ranged reads of old packs the repack made;
	// WriteRequests the objects it wrote (packs, indexes, manifests, records).
	ReadRequests, ReadBytes, WriteRequests int64
	// Duplicates are extra copies of an object (same kind and ID in more than one
	// place), from publishes that ran at once or short runs written again, and
	// DuplicateBytes their size; DuplicatesRemoved are those gone with the packs
	// this run deleted or repacked (a repack writes one copy and points every
	// manifest it rewrites at it).
	Duplicates, DuplicateBytes, DuplicatesRemoved int64
}

// Reclaimed is the bytes of pack files deleted less those the repack wrote.
func (r PackReport) Reclaimed() int64 { return r.Deleted.DeletedBytes - r.NewPackBytes }

// objKey is an object of a packed store by what it is.
type objKey struct {
	kind chunkstore.ObjectKind
	id   chunk.ID
}

// objAt is a place in a pack.
type objAt struct {
	pack chunk.ID
	off  uint64
}

// packState is what gc knows of one pack.
type packState struct {
	x        *chunkstore.PackIndex
	byOff    map[uint64]chunkstore.PackObject
	file     *blob.Info // nil: no pack file
	record   *blob.Info // nil: never repacked
	live     map[uint64]objKey
	liveSize int64
	users    [][32]byte // kept manifests pointing into it
	// useful is the live bytes whose chosen copy is here.
	useful int64
	// bad: a kept manifest points at something its index does not list there.
	bad bool
}

// packed is one collection of a packed store.
type packed struct {
	*collector
	inv    *chunkstore.Inventory
	packs  map[chunk.ID]*packState
	order  map[[32]byte]int // inventory order of manifests
	canon  map[objKey]objAt // the copy every rewritten manifest points at, in a pack that stays
	repack map[chunk.ID]bool
	remove map[chunk.ID]bool
	// rewritten: manifests this run wrote, which the re-check need not read.
	rewritten map[[32]byte]bool
	// written: packs this run wrote. A pack is named by its bytes, so one may have
	// the name of a pack planned for deletion; it stays.
	written map[chunk.ID]bool
}

// collectPacked is Collect for a packed store (layout 3): narinfos and manifests go as
// in layout 1; the objects of dropped paths go with the packs that held them.
func (c *collector) collectPacked(ctx context.Context) (Report, error) {
	inv, err := c.s.Inventory(ctx)
	if err != nil {
		return c.rep, fmt.Errorf("gc: %w", err)
	}
	p := &packed{collector: c, inv: inv, packs: map[chunk.ID]*packState{}, order: map[[32]byte]int{},
		canon: map[objKey]objAt{}, repack: map[chunk.ID]bool{}, remove: map[chunk.ID]bool{}, rewritten: map[[32]byte]bool{}, written: map[chunk.ID]bool{}}
	for i, h := range inv.Manifests {
		p.order[h] = i
	}
	c.log.Info("gc: listed store", "store", c.s.String(), "narinfos", len(inv.NarInfos), "manifests", len(inv.Manifests), "packs", len(inv.Packs), "pack_indexes", len(inv.PackIndexes))
	if err := p.readPacks(ctx); err != nil {
		return c.rep, err
	}
	d := dead{urls: map[string]string{}}
	keptNars, err := c.markNarInfos(ctx, inv.NarInfos, &d)
	if err != nil {
		return c.rep, err
	}
	if err := p.keptManifests(ctx, p.inv.Manifests, keptNars, &d, p.markLive); err != nil {
		return c.rep, err
	}
	p.plan()
	pr := &c.rep.Packs
	c.log.Info("gc: marked", "narinfos_kept", c.rep.NarInfos.Kept, "manifests_kept", c.rep.Manifests.Kept,
		"pack_bytes", pr.Bytes, "live_bytes", pr.LiveBytes, "dead_bytes", pr.DeadBytes, "packs_to_delete", len(p.remove), "packs_to_repack", len(p.repack),
		"duplicates", pr.Duplicates, "duplicate_bytes", pr.DuplicateBytes)
	if c.opts.beforeSweep != nil {
		c.opts.beforeSweep()
	}
	if err := c.sweepPaths(ctx, d); err != nil {
		return c.rep, err
	}
	if err := p.repackAll(ctx); err != nil {
		return c.rep, err
	}
	if err := p.deletePacks(ctx); err != nil {
		return c.rep, err
	}
	c.rep.Elapsed = c.now().Sub(c.start)
	c.log.Info("gc: done", "dry_run", c.opts.DryRun, "packs_deleted", pr.Deleted.Deleted, "packs_repacked", pr.Repacked, "pending", pr.Pending,
		"bytes_reclaimed", pr.Reclaimed(), "copied_bytes", pr.NewPackBytes, "read_requests", pr.ReadRequests, "read_bytes", pr.ReadBytes,
		"duplicates_removed", pr.DuplicatesRemoved, "young_spared", c.rep.Young)
	return c.rep, nil
}

// readPacks reads every pack index and the times of the pack files and of gc's
// repack records.
func (p *packed) readPacks(ctx context.Context) error {
	var mu sync.Mutex
	state := func(id chunk.ID) *packState {
		st, ok := p.packs[id]
		if !ok {
			st = &packState{live: map[uint64]objKey{}}
			p.packs[id] = st
		}
		return st
	}
	var records []chunk.ID
	if err := p.s.RepackedPacks(ctx, func(id chunk.ID) error { records = append(records, id); return nil }); err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.jobs)
	stat := func(key string, set func(*blob.Info)) {
		g.Go(func() error {
			info, err := p.b.Stat(gctx, key)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			mu.Lock()
			defer mu.Unlock()
			set(&info)
			return nil
		})
	}
	for _, id := range p.inv.Packs {
		stat(chunkstore.PackKey(id), func(i *blob.Info) { state(id).file = i })
	}
	for _, id := range records {
		stat(chunkstore.RepackedKey(id), func(i *blob.Info) { state(id).record = i })
	}
	for _, id := range p.inv.PackIndexes {
		g.Go(func() error {
			x, err := p.s.PackIndex(gctx, id)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				// An index gc cannot read would make it guess what its pack holds.
				return fmt.Errorf("gc: %w", err)
			}
			byOff := make(map[uint64]chunkstore.PackObject, len(x.Objects))
			for _, o := range x.Objects {
				byOff[o.Offset] = o
			}
			mu.Lock()
			defer mu.Unlock()
			st := state(id)
			st.x, st.byOff = x, byOff
			return nil
		})
	}
	return g.Wait()
}

// markLive records m's locations as live; p.mu is held, or no one else runs.
func (p *packed) markLive(h [32]byte, m *manifest.Manifest) {
	used := map[chunk.ID]bool{}
	mark := func(l manifest.Loc, k objKey, length uint32) {
		id := m.Packs[l.Pack]
		st, ok := p.packs[id]
		if !ok {
			st = &packState{live: map[uint64]objKey{}}
			p.packs[id] = st
		}
		if o, ok := st.byOff[l.Offset]; !ok || o.Kind != k.kind || o.ID != k.id || o.Length != length {
			if !st.bad {
				p.log.Warn("gc: a kept manifest points at an object its pack's index does not list there; the pack is neither repacked nor deleted (run shoal store verify)",
					"manifest", manifest.Key(h), "pack", id, "offset", l.Offset)
			}
			st.bad = true
		}
		if _, dup := st.live[l.Offset]; !dup {
			st.live[l.Offset] = k
			st.liveSize += int64(length)
		}
		if !used[id] {
			used[id] = true
			st.users = append(st.users, h)
		}
	}
	if !m.Packed() {
		return // an empty NAR's manifest
	}
	p.walkLocs(m, mark)
}

// old reports whether an object's time is past the grace period.
func (p *packed) old(i *blob.Info) bool { return i != nil && !i.ModTime.After(p.graceCutoff) }

// plan decides each pack's fate: deleted (nothing live, old, and not repacked within
// the grace period), repacked (old, and less than RepackBelow of it is the one copy
// of a live object), or kept; and, for every live object, which copy the manifests
// rewritten point at.
func (p *packed) plan() {
	below := p.opts.RepackBelow
	if below == 0 {
		below = DefaultRepackBelow
	}
	pr := &p.rep.Packs
	// Every copy of each object, and the live ones.
	copies := map[objKey][]objAt{}
	liveCopies := map[objKey][]objAt{}
	for id, st := range p.packs {
		if st.x != nil {
			pr.Packs++
			pr.Bytes += int64(st.x.Size)
			pr.LiveBytes += st.liveSize
			for _, o := range st.x.Objects {
				k := objKey{o.Kind, o.ID}
				copies[k] = append(copies[k], objAt{id, o.Offset})
			}
		}
		if st.x == nil || st.file == nil || st.bad {
			continue // no copy a manifest may be pointed at
		}
		for off, k := range st.live {
			liveCopies[k] = append(liveCopies[k], objAt{id, off})
		}
	}
	pr.DeadBytes = pr.Bytes - pr.LiveBytes
	for _, at := range copies {
		if len(at) > 1 {
			pr.Duplicates += int64(len(at) - 1)
			for _, a := range at[1:] {
				pr.DuplicateBytes += int64(p.packs[a.pack].byOff[a.off].Length)
			}
		}
	}
	// The copy kept of a live object is the one in the pack with the most live bytes,
	// the pack most likely to stay.
	better := func(a, b objAt) bool {
		la, lb := p.packs[a.pack].liveSize, p.packs[b.pack].liveSize
		if la != lb {
			return la > lb
		}
		if c := cmp.Compare(a.pack.String(), b.pack.String()); c != 0 {
			return c < 0
		}
		return a.off < b.off
	}
	for k, at := range liveCopies {
		best := at[0]
		for _, a := range at[1:] {
			if better(a, best) {
				best = a
			}
		}
		p.canon[k] = best
		if st := p.packs[best.pack]; st.x != nil {
			st.useful += int64(st.byOff[best.off].Length)
		}
	}
	for id, st := range p.packs {
		switch {
		case st.x == nil || st.file == nil || st.bad:
			// Orphans and strays are deletePacks' business; a pack whose index
			// disagrees with a manifest is left to verify.
		case !p.old(st.file):
			p.rep.Young++
		case st.liveSize == 0 && st.record != nil && !p.old(st.record):
			pr.Pending++
		case st.liveSize == 0:
			p.remove[id] = true
		case below > 0 && (st.record != nil || float64(st.useful) < below*float64(st.x.Size)):
			// A repacked pack that something points into again (a publish that
			// started before the repack) is repacked again, whatever its share:
			// publishes starting after the record leave it alone.
			p.repack[id] = true
			pr.Repacked++
			pr.RepackedBytes += int64(st.x.Size)
		}
	}
	// An object whose kept copy is in a pack being repacked moves to another live
	// copy in a pack that stays, or, without one, to a new copy (no canon entry).
	stays := func(a objAt) bool { return !p.repack[a.pack] && !p.remove[a.pack] }
	for k, c := range p.canon {
		if stays(c) {
			continue
		}
		delete(p.canon, k)
		for _, a := range liveCopies[k] {
			if c, ok := p.canon[k]; stays(a) && (!ok || better(a, c)) {
				p.canon[k] = a
			}
		}
	}
	// Extra copies that go: those in packs deleted or repacked, leaving at least one.
	for k, at := range copies {
		if len(at) < 2 {
			continue
		}
		left := 0
		for _, a := range at {
			if stays(a) {
				left++
			}
		}
		if _, ok := p.canon[k]; !ok && len(liveCopies[k]) > 0 {
			left++ // the new copy
		}
		pr.DuplicatesRemoved += int64(len(at) - max(left, 1))
	}
}

// rewrite is a manifest waiting for the new packs its copies go into.
type rewrite struct {
	m *manifest.Manifest
	// targets, per location in the order rewriteLocs walks them: where the object
	// lies now (newSeq < 0) or its place in new pack newSeq.
	targets []target
	maxSeq  int
}

type target struct {
	at     objAt
	newSeq int
	length uint32
}

// repackAll copies the live objects of the packs to repack into new packs, in the
// order of the manifests that use them (each NAR's chunk objects in NAR order, then
// its delta objects), and rewrites those manifests once the packs they point into
// are written. Each repacked pack then gets its record.
func (p *packed) repackAll(ctx context.Context) error {
	if len(p.repack) == 0 {
		return nil
	}
	size := p.opts.PackSize
	if size <= 0 {
		size = DefaultPackSize
	}
	var users [][32]byte
	seen := map[[32]byte]bool{}
	for id := range p.repack {
		for _, h := range p.packs[id].users {
			if !seen[h] {
				seen[h] = true
				users = append(users, h)
			}
		}
	}
	slices.SortFunc(users, func(a, b [32]byte) int { return cmp.Compare(p.order[a], p.order[b]) })

	codec, err := chunk.NewCodec()
	if err != nil {
		return err
	}
	defer codec.Close()
	pr := &p.rep.Packs
	var (
		b       chunkstore.PackBuilder
		seq     int        // of the open pack
		written []chunk.ID // new packs, by seq
		copied  = map[objKey]target{}
		queue   []*rewrite
		dry     = p.opts.DryRun
		dryLen  int
	)
	flushQueue := func() error {
		rest := queue[:0]
		for _, rw := range queue {
			if rw.maxSeq >= len(written) {
				rest = append(rest, rw)
				continue
			}
			if err := p.writeManifest(ctx, rw, written); err != nil {
				return err
			}
		}
		queue = rest
		return nil
	}
	seal := func() error {
		if b.Objects() == 0 {
			return nil
		}
		data, x := b.Seal()
		b = chunkstore.PackBuilder{}
		if err := p.s.PutPack(ctx, data, x); err != nil {
			return fmt.Errorf("gc: repacking: %w", err)
		}
		written = append(written, x.Pack)
		p.written[x.Pack] = true
		seq++
		pr.NewPacks++
		pr.NewPackBytes += int64(len(data))
		pr.WriteRequests += 2
		p.log.Debug("gc: pack written", "pack", x.Pack, "objects", len(x.Objects), "bytes", len(data))
		return flushQueue()
	}
	for _, h := range users {
		m, _, err := p.s.Manifest(ctx, h)
		if errors.Is(err, shoal.ErrNotFound) {
			continue // deleted since the mark; its packs' records cover it
		}
		if err != nil {
			return fmt.Errorf("gc: repacking: %w", err)
		}
		if !m.Packed() {
			continue
		}
		rw := &rewrite{m: m, maxSeq: -1}
		type pending struct {
			k   objKey
			src objAt
			n   uint32
			t   int // index into rw.targets
		}
		var toCopy []pending
		var keys []objKey // of each location, in walkLocs order
		p.walkLocs(m, func(l manifest.Loc, k objKey, length uint32) {
			keys = append(keys, k)
			at := objAt{m.Packs[l.Pack], l.Offset}
			t := target{at: at, newSeq: -1, length: length}
			if c, ok := p.canon[k]; ok {
				t.at, t.length = c, p.packs[c.pack].byOff[c.off].Length
			} else if c, ok := copied[k]; ok {
				t = c
			} else if p.repack[at.pack] {
				toCopy = append(toCopy, pending{k, at, length, len(rw.targets)})
				copied[k] = target{newSeq: -2} // placed below
			}
			rw.targets = append(rw.targets, t)
		})
		// Read the objects to copy, a run of neighbours in one pack at a time.
		for i := 0; i < len(toCopy); {
			j, end := i+1, toCopy[i].src.off+uint64(toCopy[i].n)
			for j < len(toCopy) && toCopy[j].src.pack == toCopy[i].src.pack && toCopy[j].src.off >= end && toCopy[j].src.off-end <= repackReadGap && toCopy[j].src.off+uint64(toCopy[j].n)-toCopy[i].src.off <= repackMaxRead {
				end = toCopy[j].src.off + uint64(toCopy[j].n)
				j++
			}
			start := toCopy[i].src.off
			var data []byte
			if !dry {
				data, err = p.readSpan(ctx, toCopy[i].src.pack, start, end-start)
				if err != nil {
					return fmt.Errorf("gc: repacking: %w", err)
				}
			}
			pr.ReadRequests++
			pr.ReadBytes += int64(end - start)
			for _, c := range toCopy[i:j] {
				var obj []byte
				if !dry {
					obj = data[c.src.off-start : c.src.off-start+uint64(c.n)]
					if o, ok := p.packs[c.src.pack].byOff[c.src.off]; !ok || o.Kind != c.k.kind || o.ID != c.k.id || o.Length != c.n {
						return fmt.Errorf("gc: repacking manifest %s: pack %s holds no %s %s of %d bytes at %d", manifest.Key(h), c.src.pack, c.k.kind, c.k.id, c.n, c.src.off)
					}
					// A copy is checked like a read: gc never spreads a bad object.
					if c.k.kind == chunkstore.KindChunk {
						if _, err := codec.Open(nil, c.k.id, obj, chunk.MaxChunkSize); err != nil {
							return fmt.Errorf("gc: repacking manifest %s: chunk object at %d of pack %s: %w", manifest.Key(h), c.src.off, c.src.pack, err)
						}
					}
				}
				t := target{at: objAt{off: uint64(b.Len())}, newSeq: seq, length: c.n}
				copied[c.k] = t
				rw.targets[c.t] = t
				pr.CopiedObjects++
				if dry {
					// Nothing is read: count what the pack would hold.
					dryLen += int(c.n)
					if dryLen >= size {
						pr.NewPacks++
						pr.NewPackBytes += int64(dryLen)
						dryLen = 0
						seq++
					}
					continue
				}
				b.Add(c.k.kind, c.k.id, obj)
				if b.Len() >= size {
					if err := seal(); err != nil {
						return err
					}
				}
			}
			i = j
		}
		for i, t := range rw.targets {
			if t.newSeq == -2 {
				// Copied earlier in this manifest: now placed.
				rw.targets[i] = copied[keys[i]]
			}
			rw.maxSeq = max(rw.maxSeq, rw.targets[i].newSeq)
		}
		if dry {
			pr.ManifestsRewritten++
			continue
		}
		queue = append(queue, rw)
		if err := flushQueue(); err != nil {
			return err
		}
	}
	if dry {
		if dryLen > 0 {
			pr.NewPacks++
			pr.NewPackBytes += int64(dryLen)
		}
		return nil
	}
	if err := seal(); err != nil {
		return err
	}
	if len(queue) != 0 {
		return fmt.Errorf("gc: repacking: %d manifests left waiting for packs", len(queue))
	}
	// Packs are named by their bytes: a repack that copied every object of a pack in
	// its own order wrote that pack again, which stays.
	for _, id := range written {
		if p.repack[id] {
			delete(p.repack, id)
			pr.Repacked--
			pr.RepackedBytes -= int64(p.packs[id].x.Size)
			if err := p.b.Delete(ctx, chunkstore.RepackedKey(id)); err != nil {
				return fmt.Errorf("gc: %w", err)
			}
		}
	}
	// Every manifest that pointed into these packs points elsewhere now; the record
	// starts the grace period clients holding an older manifest have.
	now := []byte(p.now().UTC().Format(time.RFC3339) + "\n")
	for id := range p.repack {
		if err := p.b.Put(ctx, chunkstore.RepackedKey(id), now); err != nil {
			return fmt.Errorf("gc: recording repacked pack %s: %w", id, err)
		}
		pr.WriteRequests++
	}
	return nil
}

// readSpan reads n bytes at off of a pack with one ranged request.
func (p *packed) readSpan(ctx context.Context, pack chunk.ID, off, n uint64) ([]byte, error) {
	rc, err := p.b.OpenRange(ctx, chunkstore.PackKey(pack), int64(off), int64(n))
	if err != nil {
		return nil, fmt.Errorf("reading pack %s: %w", pack, err)
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("reading %d bytes at %d of pack %s: %w", n, off, pack, err)
	}
	return buf, nil
}

// walkLocs calls fn for each location of m: the chunk objects in NAR order, then the
// delta objects in NAR order, the order publish writes them in. Entries without a
// chunk object of their own (version 4) have no chunk location.
func (p *packed) walkLocs(m *manifest.Manifest, fn func(l manifest.Loc, k objKey, length uint32)) {
	for i, e := range m.Entries {
		if e.StoredSize > 0 {
			fn(m.Locs[i], objKey{chunkstore.KindChunk, e.ID}, e.StoredSize)
		}
	}
	for i := range m.Entries {
		if _, did, size, ok := m.DeltaOf(i); ok {
			fn(m.Deltas[i].Loc, objKey{chunkstore.KindDelta, did}, size)
		}
	}
}

// writeManifest writes rw's manifest pointing at its targets.
func (p *packed) writeManifest(ctx context.Context, rw *rewrite, written []chunk.ID) error {
	m := rw.m
	nm := *m
	nm.Packs, nm.Locs = nil, make([]manifest.Loc, len(m.Entries))
	nm.Entries = slices.Clone(m.Entries)
	nm.Deltas = slices.Clone(m.Deltas)
	packIdx := map[chunk.ID]uint32{}
	loc := func(t target) manifest.Loc {
		at := t.at
		if t.newSeq >= 0 {
			at.pack = written[t.newSeq]
		}
		i, ok := packIdx[at.pack]
		if !ok {
			i = uint32(len(nm.Packs))
			packIdx[at.pack] = i
			nm.Packs = append(nm.Packs, at.pack)
		}
		return manifest.Loc{Pack: i, Offset: at.off}
	}
	n := 0
	for i, e := range m.Entries {
		if e.StoredSize == 0 {
			continue // no chunk object of its own: no location (version 4)
		}
		t := rw.targets[n]
		n++
		nm.Locs[i] = loc(t)
		nm.Entries[i].StoredSize = t.length
	}
	for i := range m.Entries {
		if _, _, _, ok := m.DeltaOf(i); ok {
			t := rw.targets[n]
			n++
			nm.Deltas[i].Loc = loc(t)
			nm.Deltas[i].StoredSize = t.length
		}
	}
	if err := p.s.PutManifest(ctx, &nm); err != nil {
		return fmt.Errorf("gc: rewriting manifest: %w", err)
	}
	p.mu.Lock()
	p.rewritten[m.NarHash] = true
	p.mu.Unlock()
	p.rep.Packs.ManifestsRewritten++
	p.rep.Packs.WriteRequests++
	return nil
}

// deletePacks deletes the packs planned for it, after reading again every manifest
// written since the mark began: one a publish wrote meanwhile may point into them.
// Each pack's time is looked at again right before it goes (deleteOld), as a publish
// refreshes the packs it reuses. Orphans go too: pack files without an index (an
// interrupted publish or repack), indexes without a pack file, records of packs gone.
func (p *packed) deletePacks(ctx context.Context) error {
	if len(p.remove) > 0 {
		if err := p.recheck(ctx); err != nil {
			return err
		}
	}
	pr := &p.rep.Packs
	type victim struct {
		id                  chunk.ID
		pack, index, record bool
	}
	var vs []victim
	for id, st := range p.packs {
		switch {
		case p.written[id]:
		case p.remove[id]:
			vs = append(vs, victim{id, true, true, st.record != nil})
		case st.x == nil && st.file != nil && len(st.live) == 0:
			vs = append(vs, victim{id, true, false, st.record != nil})
		case st.x != nil && st.file == nil && len(st.live) == 0:
			vs = append(vs, victim{id, false, true, st.record != nil})
		case st.x == nil && st.file == nil && st.record != nil:
			vs = append(vs, victim{id, false, false, true})
		case st.x != nil && st.file != nil && !p.repack[id] && !p.remove[id]:
			pr.Deleted.Kept++
			pr.Deleted.KeptBytes += int64(st.x.Size)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.jobs)
	for _, v := range vs {
		g.Go(func() error {
			if v.pack {
				gone, size, err := p.deleteOld(gctx, chunkstore.PackKey(v.id))
				if err != nil {
					return fmt.Errorf("gc: deleting pack %s: %w", v.id, err)
				}
				p.mu.Lock()
				if gone {
					pr.Deleted.Deleted++
					pr.Deleted.DeletedBytes += size
				} else if size > 0 {
					pr.Deleted.Kept++
					pr.Deleted.KeptBytes += size
					p.rep.Young++
				}
				p.mu.Unlock()
				if !gone && size > 0 {
					return nil // refreshed by a publish: it stays with its index
				}
			}
			if p.opts.DryRun {
				return nil
			}
			if v.index {
				if gone, _, err := p.deleteOld(gctx, chunkstore.PackIndexKey(v.id)); err != nil {
					return fmt.Errorf("gc: deleting index of pack %s: %w", v.id, err)
				} else if !gone {
					return nil
				}
			}
			if v.record {
				if err := p.b.Delete(gctx, chunkstore.RepackedKey(v.id)); err != nil {
					return fmt.Errorf("gc: deleting repack record of pack %s: %w", v.id, err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// recheck reads the manifests written since the mark began (not the ones this run
// rewrote) and takes the packs they point into off the list to delete.
func (p *packed) recheck(ctx context.Context) error {
	var keys []string
	if err := p.b.List(ctx, chunkstore.ManifestPrefix, func(key string) error {
		if h, ok := chunkstore.ParseManifestKey(key); ok && !p.rewritten[h] {
			keys = append(keys, key)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("gc: listing manifests again: %w", err)
	}
	since := p.start.Add(-time.Second)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.jobs)
	for _, key := range keys {
		g.Go(func() error {
			info, err := p.b.Stat(gctx, key)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			if info.ModTime.Before(since) {
				return nil
			}
			h, _ := chunkstore.ParseManifestKey(key)
			m, _, err := p.s.Manifest(gctx, h)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				// Unreadable: it might point anywhere, so nothing is deleted.
				return fmt.Errorf("gc: re-reading a manifest written during the collection: %w", err)
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			for _, id := range m.Packs {
				if p.remove[id] {
					p.log.Info("gc: a manifest written during the collection points into a pack it was to delete; the pack stays", "manifest", manifest.Key(h), "pack", id)
					delete(p.remove, id)
					p.packs[id].live[0] = objKey{} // keep it out of the orphan cases
				}
			}
			return nil
		})
	}
	return g.Wait()
}
