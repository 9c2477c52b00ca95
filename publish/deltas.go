package publish

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/manifest"
)

// deltaSet collects the deltas of one NAR while its chunks are written.
type deltaSet struct {
	base *deltaBase
	// align and seen are used by the chunker's goroutine only.
	align *delta.Aligner
	seen  map[chunk.ID]bool // chunks already given a delta job
	n     int               // base chunks per delta

	mu                  sync.Mutex
	recs                map[int]deltaRec // by entry index
	count, bytes, saved int64
	warned              bool
}

// deltaRec is one entry's delta: its base chunks (indexes into the base manifest, in
// dictionary order) and the delta object's size.
type deltaRec struct {
	bases []int
	size  uint32
	// In a packed store: the delta ID, and the object when this run made it.
	id  chunk.ID
	obj []byte
}

func newDeltaSet(base *deltaBase, narSize uint64, n int) *deltaSet {
	return &deltaSet{base: base, align: base.layout.NewAligner(base.ids, narSize), seen: map[chunk.ID]bool{}, n: n, recs: map[int]deltaRec{}}
}

// next is told every chunk of the NAR in order, at offset off, and returns the base
// chunks (indexes into the base manifest) of its delta, or nil when it gets none:
// when the base has it (a client holding the base has it too), when this NAR had it
// before, or when it is too large for a delta. Chunks the store already had from other
// NARs do get one: a client upgrading from the base does not have those either.
// inBase says the base has the chunk.
func (d *deltaSet) next(id chunk.ID, off uint64, raw []byte) (bases []int, inBase bool) {
	bases, inBase = d.align.Next(id, off, uint32(len(raw)), d.n)
	if inBase || d.seen[id] || len(raw) > chunk.MaxDeltaChunk {
		return nil, inBase
	}
	d.seen[id] = true
	return bases, false
}

// makeDelta makes (or finds, after an interrupted run) the delta of entry idx against
// the base chunks idxs, and records it when it is worth keeping.
func (p *Publisher) makeDelta(ctx context.Context, d *deltaSet, idx int, idxs []int, id chunk.ID, raw []byte, fullSize int) error {
	ids := make([]chunk.ID, len(idxs))
	for k, bi := range idxs {
		ids[k] = d.base.m.Entries[bi].ID
	}
	did := chunk.DeltaID(id, ids)
	// A delta named by the same target and bases is the same delta: an earlier,
	// interrupted run wrote it. Refreshing it also keeps a concurrent gc off it.
	var (
		size int64
		have bool
		err  error
	)
	if p.packer != nil {
		if ref, ok := p.packer.lookup(chunkstore.KindDelta, did); ok {
			size, have = int64(ref.length), true
		}
	} else if size, have, err = p.dst.RefreshDelta(ctx, did); err != nil {
		return err
	}
	if have && size > 0 && size < math.MaxUint32 {
		d.record(idx, idxs, did, nil, int(size), fullSize)
		return nil
	}
	var dict []byte
	for _, bi := range idxs {
		e := d.base.m.Entries[bi]
		var b []byte
		if p.chains != nil && d.base.node != nil {
			b, err = p.chains.raw(ctx, d.base.node, e.ID, e.Size)
		} else {
			b, err = p.bases.get(ctx, e.ID, e.Size)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A base chunk the store cannot give costs this delta, not the NAR: the
			// full chunk is there. gc's verify reports the store's problem.
			d.warnOnce(p, "no delta for a chunk: a base chunk is unreadable", "chunk", id, "base_chunk", e.ID, "err", err)
			return nil
		}
		dict = append(dict, b...)
	}
	select {
	case p.cpu <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	obj, err := p.deltas.EncodeDelta(nil, raw, dict)
	<-p.cpu
	if err != nil {
		return fmt.Errorf("chunk %s: %w", id, err)
	}
	if !delta.Worth(len(obj), fullSize) {
		return nil
	}
	if p.packer != nil {
		// The object joins the NAR's delta run once every delta is made.
		d.record(idx, idxs, did, obj, len(obj), fullSize)
		return nil
	}
	if err := p.dst.PutDelta(ctx, did, obj); err != nil {
		return err
	}
	d.record(idx, idxs, did, nil, len(obj), fullSize)
	return nil
}

func (d *deltaSet) record(idx int, bases []int, id chunk.ID, obj []byte, size, fullSize int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recs[idx] = deltaRec{bases: bases, size: uint32(size), id: id, obj: obj}
	d.count++
	d.bytes += int64(size)
	d.saved += int64(fullSize - size)
}

func (d *deltaSet) warnOnce(p *Publisher, msg string, args ...any) {
	d.mu.Lock()
	first := !d.warned
	d.warned = true
	d.mu.Unlock()
	if first {
		p.log.Warn(msg, args...)
	}
}

// attach records the deltas in m, which makes it a version 2 manifest; with none it
// stays version 1. Base chunks are listed in the base NAR's order, each once.
func (d *deltaSet) attach(m *manifest.Manifest) {
	if len(d.recs) == 0 {
		return
	}
	var used []int
	for _, r := range d.recs {
		used = append(used, r.bases...)
	}
	slices.Sort(used)
	pos := map[chunk.ID]uint32{}
	for _, bi := range slices.Compact(used) {
		e := d.base.m.Entries[bi]
		if _, ok := pos[e.ID]; !ok {
			pos[e.ID] = uint32(len(m.Bases))
			m.Bases = append(m.Bases, manifest.BaseChunk{ID: e.ID, Size: e.Size})
		}
	}
	m.Deltas = make([]manifest.Delta, len(m.Entries))
	for i, r := range d.recs {
		dl := manifest.Delta{StoredSize: r.size, Bases: make([]uint32, len(r.bases))}
		for k, bi := range r.bases {
			dl.Bases[k] = pos[d.base.m.Entries[bi].ID]
		}
		m.Deltas[i] = dl
	}
	m.BaseNarHash = d.base.nar.NarHash
}
