// Package migrate turns a store of one object per chunk and per delta (layout 1, with
// version 1 and 2 manifests) into a packed store (layout 3), in place, while clients
// keep reading it.
//
// For each manifest that is not yet version 3, its chunk objects (and delta objects)
// are read from their loose keys, checked, appended to packs in NAR order (chunks,
// then deltas), and once every pack it points into is written, the manifest is
// rewritten as version 3. Readers choose how to read per manifest (by name for
// version 1 and 2, by location for version 3), and the loose objects stay, so every
// NAR reads at every moment. Only when every manifest is version 3 does
// shoal-store.json switch to layout 3. A run that stops (cancelled, failed) leaves
// packs that nothing points into yet; the next run reads their indexes and reuses
// their objects, so it resumes where the last one stopped.
//
// Loose objects are deleted by a later run with Options.Finish, once the switch is
// older than a grace period: a client may hold a version 1 or 2 manifest read just
// before its NAR was migrated.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"golang.org/x/sync/errgroup"
)

// Options tune a migration.
type Options struct {
	// PackSize closes a pack at this size; 0 means 32 MiB, as publish.
	PackSize int
	// MinReuseRun is publish's rule for chunks shared between NARs: where a NAR's
	// chunks already packed for an earlier NAR lie in a run of fewer bytes than this,
	// they are packed again beside its other chunks, so a cold read of the NAR needs
	// few requests. 0 means 64 KiB; negative reuses every run.
	MinReuseRun int
	// Jobs bounds the loose objects read at once; 0 means 16.
	Jobs int
	// Finish deletes the loose objects once the store is layout 3, every manifest is
	// version 3 and the switch is older than Grace.
	Finish bool
	Grace  time.Duration
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Report is what a run did.
type Report struct {
	Manifests     int // manifests seen
	Migrated      int // rewritten as version 3 in this run
	AlreadyPacked int // version 3 already (or empty, which needs no pack)
	Failed        int // left as they were: a loose object is missing or corrupt
	Packs         int
	PackBytes     int64
	Copies        int64 // chunks packed again for MinReuseRun
	Switched      bool  // shoal-store.json switched to layout 3 in this run
	Packed        bool  // the store is layout 3 at the end of the run
	LooseDeleted  int   // loose chunk and delta objects deleted (Finish)
	Elapsed       time.Duration
}

// ErrNotDone is returned (wrapped) when a run could not migrate every manifest, or
// Finish could not delete yet; what remains is in the report and the log.
var ErrNotDone = errors.New("migration not complete")

type objKey struct {
	kind chunkstore.ObjectKind
	id   chunk.ID
}

// ref is where an object lies or will lie: in pack number seq at off.
type ref struct {
	seq    int64
	off    uint64
	length uint32
}

// pending is a migrated NAR waiting for its last pack to be written.
type pending struct {
	m      *manifest.Manifest
	chunks []ref
	deltas map[int]ref
	maxSeq int64
}

type migrator struct {
	s     *chunkstore.Store
	opts  Options
	log   *slog.Logger
	codec *chunk.Codec

	index   map[objKey]ref
	packIDs map[int64]chunk.ID // written packs by number
	seq     int64              // the open pack's number
	cur     chunkstore.PackBuilder
	waiting []pending
	rep     Report
}

// Run migrates the store (see the package comment).
func Run(ctx context.Context, s *chunkstore.Store, opts Options) (Report, error) {
	start := time.Now()
	if opts.PackSize <= 0 {
		opts.PackSize = 32 << 20
	}
	if opts.PackSize > manifest.MaxPackSize/2 {
		return Report{}, fmt.Errorf("pack size %d: at most %d", opts.PackSize, manifest.MaxPackSize/2)
	}
	if opts.MinReuseRun == 0 {
		opts.MinReuseRun = 64 << 10
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 16
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		return Report{}, err
	}
	defer codec.Close()
	mg := &migrator{s: s, opts: opts, log: log, codec: codec, index: map[objKey]ref{}, packIDs: map[int64]chunk.ID{}}
	err = mg.run(ctx)
	mg.rep.Elapsed = time.Since(start)
	return mg.rep, err
}

func (mg *migrator) run(ctx context.Context) error {
	meta, err := mg.s.Meta(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	mg.rep.Packed = meta.Packed()
	if mg.opts.Finish && !meta.Packed() {
		return fmt.Errorf("migrate: store %s is layout %d: run migrate without --finish until it switches to %d", mg.s, meta.Version, chunkstore.FormatPacked)
	}
	if err := mg.readPacks(ctx); err != nil {
		return err
	}
	// Manifests published while the pass runs (into a layout 1 store, by a publish
	// that started before the switch) are found by listing again.
	done := map[[32]byte]bool{}
	for {
		inv, err := mg.s.Inventory(ctx)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		var todo [][32]byte
		for _, h := range inv.Manifests {
			if !done[h] {
				todo = append(todo, h)
				done[h] = true
			}
		}
		if len(todo) == 0 {
			break
		}
		for _, h := range todo {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := mg.manifest(ctx, h); err != nil {
				return err
			}
		}
		if err := mg.seal(ctx); err != nil {
			return err
		}
		if err := mg.commit(ctx); err != nil {
			return err
		}
	}
	if mg.rep.Failed > 0 {
		return fmt.Errorf("%w: %d manifests could not be migrated (see the log); the store stays layout %d", ErrNotDone, mg.rep.Failed, meta.Version)
	}
	if !meta.Packed() {
		if err := mg.s.SwitchLayout(ctx, meta.Version, chunkstore.FormatPacked); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		mg.rep.Switched, mg.rep.Packed = true, true
		mg.log.Info("every manifest is version 3: the store is now layout 3", "store", mg.s.String())
	}
	if mg.opts.Finish {
		return mg.finish(ctx)
	}
	return nil
}

// readPacks indexes the objects of the packs the store has, from an interrupted run
// or a packed publish, so they are reused rather than packed again.
func (mg *migrator) readPacks(ctx context.Context) error {
	var ids []chunk.ID
	if err := mg.s.PackIndexes(ctx, func(id chunk.ID) error { ids = append(ids, id); return nil }); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, id := range ids {
		x, err := mg.s.PackIndex(ctx, id)
		if errors.Is(err, shoal.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		mg.seq++
		mg.packIDs[mg.seq] = id
		for _, o := range x.Objects {
			k := objKey{o.Kind, o.ID}
			if _, dup := mg.index[k]; !dup {
				mg.index[k] = ref{seq: mg.seq, off: o.Offset, length: o.Length}
			}
		}
	}
	mg.seq++
	return nil
}

// object is one object a NAR needs written: entry i's chunk or delta.
type object struct {
	kind  chunkstore.ObjectKind
	id    chunk.ID
	entry int
	size  uint32 // the chunk's size, to check a chunk object
	copy  bool   // a chunk the store has packed, copied for MinReuseRun
}

// manifest migrates one manifest, or counts it as done or failed.
func (mg *migrator) manifest(ctx context.Context, h [32]byte) error {
	mg.rep.Manifests++
	m, _, err := mg.s.Manifest(ctx, h)
	if errors.Is(err, shoal.ErrNotFound) {
		mg.rep.Manifests--
		return nil // collected since the listing
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		mg.log.Error("not migrated: unreadable manifest", "manifest", manifest.Key(h), "err", err)
		mg.rep.Failed++
		return nil
	}
	if m.Packed() || len(m.Entries) == 0 {
		mg.rep.AlreadyPacked++
		return nil
	}
	p := pending{m: m, chunks: make([]ref, len(m.Entries)), deltas: map[int]ref{}}
	var writes []object
	// Chunks: where the store has one packed, in a run long enough, it stays there.
	var run []int
	runBytes := 0
	closeRun := func() {
		if len(run) > 0 && runBytes < mg.opts.MinReuseRun {
			for _, i := range run {
				e := m.Entries[i]
				writes = append(writes, object{kind: chunkstore.KindChunk, id: e.ID, entry: i, size: e.Size, copy: true})
			}
		}
		run, runBytes = run[:0], 0
	}
	mine := map[chunk.ID]int{} // chunks this NAR writes, first entry
	for i, e := range m.Entries {
		if j, ok := mine[e.ID]; ok {
			closeRun()
			p.chunks[i] = ref{seq: -1, off: uint64(j)} // resolved after writing
			continue
		}
		r, ok := mg.index[objKey{chunkstore.KindChunk, e.ID}]
		if !ok {
			closeRun()
			mine[e.ID] = i
			writes = append(writes, object{kind: chunkstore.KindChunk, id: e.ID, entry: i, size: e.Size})
			continue
		}
		if len(run) > 0 {
			prev := p.chunks[run[len(run)-1]]
			if prev.seq != r.seq || prev.off+uint64(prev.length) != r.off {
				closeRun()
			}
		}
		p.chunks[i] = r
		run = append(run, i)
		runBytes += int(r.length)
	}
	closeRun()
	for i := range m.Entries {
		_, id, _, ok := m.DeltaOf(i)
		if !ok {
			continue
		}
		if r, ok := mg.index[objKey{chunkstore.KindDelta, id}]; ok {
			p.deltas[i] = r
			continue
		}
		writes = append(writes, object{kind: chunkstore.KindDelta, id: id, entry: i})
	}

	// Read in batches, in order, a few requests at once; append each batch.
	const batch = 64
	for lo := 0; lo < len(writes); lo += batch {
		ws := writes[lo:min(lo+batch, len(writes))]
		objs := make([][]byte, len(ws))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(mg.opts.Jobs)
		for k, w := range ws {
			g.Go(func() error {
				var err error
				if w.kind == chunkstore.KindChunk {
					if objs[k], err = mg.s.Chunk(gctx, w.id); err == nil {
						_, err = mg.codec.Open(nil, w.id, objs[k], int(w.size))
					}
				} else {
					objs[k], err = mg.s.Delta(gctx, w.id)
				}
				if err != nil {
					return fmt.Errorf("%s %s of entry %d: %w", w.kind, w.id, w.entry, err)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Objects already appended are checked and may serve other NARs; this
			// one keeps its manifest until its loose objects are repaired.
			mg.log.Error("not migrated", "manifest", manifest.Key(h), "err", err)
			mg.rep.Failed++
			return nil
		}
		for k, w := range ws {
			if err := mg.add(ctx, w, objs[k], &p); err != nil {
				return err
			}
		}
	}
	for i, r := range p.chunks {
		if r.seq == -1 {
			p.chunks[i] = p.chunks[r.off]
		}
	}
	for _, r := range p.chunks {
		p.maxSeq = max(p.maxSeq, r.seq)
	}
	for _, r := range p.deltas {
		p.maxSeq = max(p.maxSeq, r.seq)
	}
	mg.waiting = append(mg.waiting, p)
	return mg.commit(ctx)
}

// add appends one object to the open pack, sealing it when full.
func (mg *migrator) add(ctx context.Context, w object, obj []byte, p *pending) error {
	r := ref{seq: mg.seq, length: uint32(len(obj))}
	r.off = mg.cur.Add(w.kind, w.id, obj)
	if w.kind == chunkstore.KindChunk {
		p.chunks[w.entry] = r
		if w.copy {
			mg.rep.Copies++
		} else {
			mg.index[objKey{w.kind, w.id}] = r
		}
	} else {
		p.deltas[w.entry] = r
		mg.index[objKey{w.kind, w.id}] = r
	}
	if mg.cur.Len() >= mg.opts.PackSize {
		return mg.seal(ctx)
	}
	return nil
}

// seal writes the open pack and its index.
func (mg *migrator) seal(ctx context.Context) error {
	if mg.cur.Objects() == 0 {
		return nil
	}
	data, x := mg.cur.Seal()
	mg.cur = chunkstore.PackBuilder{}
	if err := mg.s.PutPack(ctx, data, x); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	mg.packIDs[mg.seq] = x.Pack
	mg.seq++
	mg.rep.Packs++
	mg.rep.PackBytes += int64(len(data))
	mg.log.Debug("pack written", "pack", x.Pack, "objects", len(x.Objects), "bytes", len(data))
	return nil
}

// commit writes the version 3 manifest of every waiting NAR whose packs are written.
func (mg *migrator) commit(ctx context.Context) error {
	keep := mg.waiting[:0]
	for _, p := range mg.waiting {
		if p.maxSeq >= mg.seq {
			keep = append(keep, p)
			continue
		}
		m := p.m
		packIdx := map[chunk.ID]uint32{}
		loc := func(r ref) manifest.Loc {
			id := mg.packIDs[r.seq]
			i, ok := packIdx[id]
			if !ok {
				i = uint32(len(m.Packs))
				packIdx[id] = i
				m.Packs = append(m.Packs, id)
			}
			return manifest.Loc{Pack: i, Offset: r.off}
		}
		m.Locs = make([]manifest.Loc, len(m.Entries))
		for i, r := range p.chunks {
			m.Locs[i] = loc(r)
			m.Entries[i].StoredSize = r.length
		}
		for i, r := range p.deltas {
			m.Deltas[i].Loc = loc(r)
			m.Deltas[i].StoredSize = r.length
		}
		if err := mg.s.PutManifest(ctx, m); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		mg.rep.Migrated++
		mg.log.Info("migrated", "manifest", manifest.Key(m.NarHash), "packs", len(m.Packs))
	}
	mg.waiting = keep
	return nil
}

// finish deletes the loose objects of a store that switched at least Grace ago. Any
// manifest this run had to migrate (a publish of the old layout that ran past the
// switch) restarts the wait: a client may have just read its old version.
func (mg *migrator) finish(ctx context.Context) error {
	if mg.rep.Migrated > 0 {
		return fmt.Errorf("%w: this run migrated %d manifests; run --finish again once --grace has passed", ErrNotDone, mg.rep.Migrated)
	}
	info, err := mg.s.Backend().Stat(ctx, chunkstore.MetaKey)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if wait := info.ModTime.Add(mg.opts.Grace + time.Second); mg.opts.Now().Before(wait) {
		return fmt.Errorf("%w: the store switched to layout %d at %s; loose objects stay until %s (--grace)", ErrNotDone,
			chunkstore.FormatPacked, info.ModTime.UTC().Format(time.RFC3339), wait.UTC().Format(time.RFC3339))
	}
	inv, err := mg.s.Inventory(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var keys []string
	for _, id := range inv.Chunks {
		keys = append(keys, chunkstore.ChunkKey(id))
	}
	for _, id := range inv.Deltas {
		keys = append(keys, chunkstore.DeltaKey(id))
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(mg.opts.Jobs)
	for _, k := range keys {
		g.Go(func() error { return mg.s.Backend().Delete(gctx, k) })
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("migrate: deleting loose objects: %w", err)
	}
	mg.rep.LooseDeleted = len(keys)
	return nil
}
