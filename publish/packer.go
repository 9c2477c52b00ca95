package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"golang.org/x/sync/errgroup"
)

// DefaultPackSize is the size at which a pack is closed. Between 16 and 64 MiB every
// pack is far above the 128 KiB that cheap storage classes bill an object at least,
// and a publish keeps at most a few packs in memory; 32 MiB measured within a few
// percent of 64 MiB for requests per NAR (internal/cmd/layout-bench).
const DefaultPackSize = 32 << 20

// DefaultMinReuseRun is Options.MinReuseRun's default. On five consecutive Go
// toolchains (internal/cmd/layout-bench, 32 MiB packs), the newest fetched cold took 97
// requests with every run reused, 43 (1.8% of its chunks) with 64 KiB and 24 with
// 128 KiB, for a store 0.2%, 7.0% and 11.9% larger than one object per chunk: 64 KiB
// keeps a cold NAR within 2% as many requests as chunks for the least space.
const DefaultMinReuseRun = 64 << 10

// maxPackWrites bounds the sealed packs being uploaded at once, and so the memory a
// slow store makes a publish hold.
const maxPackWrites = 2

// objKey names a stored object: chunk IDs and delta IDs are hashes of different
// things, but the kind keeps them apart without relying on that.
type objKey struct {
	kind chunkstore.ObjectKind
	id   chunk.ID
}

// objRef is one object of a packed store: in a pack already (done is closed and
// pack/off say where), or claimed by a NAR of this run and on its way into one.
type objRef struct {
	key    objKey
	length uint32
	done   chan struct{} // closed when the object is in the store, or failed to be

	// Guarded by packer.mu until done closes; read-only after.
	obj  []byte // the object's bytes until its pack is written
	pack chunk.ID
	off  uint64
	err  error
	// seq numbers the pack the object is in, or will be in once added, so that
	// neighbours can be told before the pack is written; 0 until then.
	seq int64
	// stored: the object was in the store before this run, in a pack a concurrent
	// gc may delete; a manifest pointing at it refreshes that pack first.
	stored bool
}

// packer appends the objects of a run to packs, seals each pack at the target size,
// writes it with its index, and knows every object the store holds and every one
// this run claimed, so no object is written twice by one run.
type packer struct {
	st     *chunkstore.Store
	target int
	log    *slog.Logger

	mu      sync.Mutex
	seq     int64 // of the open pack; each pack read or made gets the next
	index   map[objKey]*objRef
	cur     chunkstore.PackBuilder
	curRefs []*objRef

	// learned numbers the packs known from base manifests (lineage mode, see
	// learn), below 0 so they never meet the numbers of packs this run makes.
	learned map[chunk.ID]int64

	writes sync.WaitGroup
	slots  chan struct{}
	packs  atomic.Int64
	bytes  atomic.Int64
	failed atomic.Int64
	wctx   context.Context
}

// newPacker, with readIndexes, reads the index of every pack in the store, so a chunk
// the store holds is found without a request. The map holds about 100 bytes per
// object; a store too large for that, or written by several workers at once, is
// published without (docs/scale.md): the packer then knows the objects of its own run
// and those of the bases' manifests it is told about (learn).
func newPacker(ctx context.Context, st *chunkstore.Store, target int, readIndexes bool, log *slog.Logger) (*packer, error) {
	p := &packer{st: st, target: target, log: log, index: map[objKey]*objRef{}, learned: map[chunk.ID]int64{}, slots: make(chan struct{}, maxPackWrites), wctx: ctx}
	if !readIndexes {
		p.seq++
		return p, nil
	}
	// A pack gc has repacked is on its way out: its objects are written again rather
	// than pointed at, so new manifests do not keep it alive.
	repacked := map[chunk.ID]bool{}
	if err := st.RepackedPacks(ctx, func(id chunk.ID) error { repacked[id] = true; return nil }); err != nil {
		return nil, err
	}
	var ids []chunk.ID
	if err := st.PackIndexes(ctx, func(id chunk.ID) error {
		if !repacked[id] {
			ids = append(ids, id)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, id := range ids {
		g.Go(func() error {
			x, err := st.PackIndex(gctx, id)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			p.seq++
			for _, o := range x.Objects {
				k := objKey{o.Kind, o.ID}
				if _, dup := p.index[k]; dup {
					continue // written twice by publishes running at once; either copy serves
				}
				r := &objRef{key: k, length: o.Length, done: make(chan struct{}), pack: x.Pack, off: o.Offset, seq: p.seq, stored: true}
				close(r.done)
				p.index[k] = r
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("reading the store's pack indexes: %w", err)
	}
	log.Debug("read the store's pack indexes", "packs", len(ids), "objects", len(p.index))
	p.seq++
	return p, nil
}

// learn records where the chunk objects of a version 3 manifest lie, so that a NAR
// based on it reuses the chunks it shares with its base where they are, with no
// index of the store. An object the packer knows already keeps its reference.
func (p *packer) learn(m *manifest.Manifest) {
	if !m.Packed() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, e := range m.Entries {
		k := objKey{chunkstore.KindChunk, e.ID}
		if _, ok := p.index[k]; ok || e.StoredSize == 0 {
			continue // known, or stored as a delta or in its own base (version 4)
		}
		l := m.Locs[i]
		pack := m.Packs[l.Pack]
		seq, ok := p.learned[pack]
		if !ok {
			seq = -int64(len(p.learned) + 1)
			p.learned[pack] = seq
		}
		r := &objRef{key: k, length: e.StoredSize, done: make(chan struct{}), pack: pack, off: l.Offset, seq: seq}
		close(r.done)
		p.index[k] = r
	}
}

// claim returns the object's reference, and whether this call created it: then the
// caller owns it and must hand it to add, even when its NAR fails, because other NARs
// of the run may already wait for it.
func (p *packer) claim(kind chunkstore.ObjectKind, id chunk.ID, obj []byte) (*objRef, bool) {
	k := objKey{kind, id}
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := p.index[k]; ok {
		return r, false
	}
	r := &objRef{key: k, length: uint32(len(obj)), done: make(chan struct{}), obj: obj}
	p.index[k] = r
	return r, true
}

// copyOf returns a reference for another copy of an object the store holds: written
// like a new object, but not what later NARs find by ID.
func (p *packer) copyOf(kind chunkstore.ObjectKind, id chunk.ID, obj []byte) *objRef {
	return &objRef{key: objKey{kind, id}, length: uint32(len(obj)), done: make(chan struct{}), obj: obj}
}

// position says where r lies or will lie (its pack's number and its offset) once it
// is in a pack or added to one, without waiting for the pack to be written.
func (p *packer) position(r *objRef) (seq int64, off uint64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return r.seq, r.off, r.seq != 0 && r.err == nil
}

// lookup returns the reference of an object the store holds or this run claimed.
func (p *packer) lookup(kind chunkstore.ObjectKind, id chunk.ID) (*objRef, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.index[objKey{kind, id}]
	return r, ok
}

// add appends claimed objects, in order, to the open pack, sealing it whenever it
// reaches the target size. Objects added in one call stay together and in order.
func (p *packer) add(refs []*objRef) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range refs {
		r.off = p.cur.Add(r.key.kind, r.key.id, r.obj)
		r.seq = p.seq
		p.curRefs = append(p.curRefs, r)
		if p.cur.Len() >= p.target {
			p.sealLocked()
		}
	}
}

// flush seals the open pack; the run calls it once every NAR has added its objects.
func (p *packer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur.Objects() > 0 {
		p.sealLocked()
	}
}

// sealLocked closes the open pack and writes it in the background, at most
// maxPackWrites at once: a caller adding objects waits here when uploads fall behind,
// which bounds memory to a few packs.
func (p *packer) sealLocked() {
	data, x := p.cur.Seal()
	refs := p.curRefs
	p.cur, p.curRefs = chunkstore.PackBuilder{}, nil
	p.seq++
	p.slots <- struct{}{}
	p.writes.Add(1)
	go func() {
		defer p.writes.Done()
		err := p.st.PutPack(p.wctx, data, x)
		// Free the slot before taking the lock: sealLocked waits for a slot with it held.
		<-p.slots
		p.mu.Lock()
		for i, r := range refs {
			if err != nil {
				r.err = err
				// A later NAR of the run claims and writes it again.
				if p.index[r.key] == r {
					delete(p.index, r.key)
				}
			} else {
				r.pack, r.off = x.Pack, x.Objects[i].Offset
			}
			r.obj = nil
		}
		p.mu.Unlock()
		for _, r := range refs {
			close(r.done)
		}
		if err != nil {
			p.failed.Add(1)
			p.log.Error("pack not written", "pack", x.Pack, "objects", len(refs), "bytes", len(data), "err", err)
			return
		}
		p.packs.Add(1)
		p.bytes.Add(int64(len(data)))
		p.log.Debug("pack written", "pack", x.Pack, "objects", len(refs), "bytes", len(data))
	}()
}

// wait returns once every sealed pack is written or failed.
func (p *packer) wait() { p.writes.Wait() }

// object returns the bytes of an object the store holds or this run claimed: from
// memory while its pack is being made, else with a ranged read of its pack.
func (p *packer) object(ctx context.Context, kind chunkstore.ObjectKind, id chunk.ID) ([]byte, error) {
	r, ok := p.lookup(kind, id)
	if !ok {
		return nil, fmt.Errorf("%s %s: %w", kind, id, shoal.ErrNotFound)
	}
	p.mu.Lock()
	obj := r.obj
	p.mu.Unlock()
	if obj != nil {
		return obj, nil
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	return p.st.ReadPackRange(ctx, r.pack, r.off, r.length)
}

// refresh sets the time of every pack of an earlier run that refs lie in to now, so
// a concurrent gc spares them (chunkstore/maintain: it never deletes a pack younger
// than its grace period). A pack already gone is forgotten, so that later NARs of the
// run write its objects again, and fails the NAR whose manifest needed it.
func (p *packer) refresh(ctx context.Context, refs []*objRef) error {
	seen := map[chunk.ID]bool{}
	for _, r := range refs {
		if !r.stored || seen[r.pack] {
			continue
		}
		seen[r.pack] = true
		ok, err := p.st.RefreshPack(ctx, r.pack)
		if err != nil {
			return err
		}
		if !ok {
			p.forget(r.pack)
			return fmt.Errorf("pack %s was collected while this NAR was being published: %w", r.pack, shoal.ErrNotFound)
		}
	}
	return nil
}

// forget drops every object of a pack that is gone from the run's index.
func (p *packer) forget(pack chunk.ID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, r := range p.index {
		if r.stored && r.pack == pack {
			delete(p.index, k)
		}
	}
}

// resolved waits until r is in the store and returns where.
func resolved(ctx context.Context, r *objRef) (chunk.ID, uint64, error) {
	select {
	case <-r.done:
	case <-ctx.Done():
		return chunk.ID{}, 0, ctx.Err()
	}
	if r.err != nil {
		return chunk.ID{}, 0, fmt.Errorf("%s %s: %w", r.key.kind, r.key.id, r.err)
	}
	return r.pack, r.off, nil
}
