// Package deltatest adds delta objects to a chunk store for tests and benchmarks of
// the client side, independently of how `shoal publish` chooses and writes them: given
// two published versions of a NAR, it encodes every chunk of the newer one that the
// older lacks against the older's chunks at the same relative NAR offset, writes the
// delta objects and rewrites the newer manifest as version 2.
package deltatest

import (
	"context"
	"fmt"
	"sort"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
)

// Options tunes AddDeltas; zero fields take defaults.
type Options struct {
	// Bases is the number of base chunks per delta (default 3): the chunk of the base
	// NAR at the target's relative offset and its neighbours.
	Bases int
}

// Result says what AddDeltas wrote.
type Result struct {
	Manifest   *manifest.Manifest // the rewritten target manifest
	Deltas     int                // delta objects written
	DeltaBytes int64              // their total size
	FullBytes  int64              // the full objects of the same chunks
}

// AddDeltas gives target's manifest in st a delta for each chunk base lacks, where the
// delta is smaller than the chunk's full object. The deltas are written before the
// manifest, as docs/format.md requires of a publisher.
func AddDeltas(ctx context.Context, st *chunkstore.Store, base, target [32]byte, opts Options) (Result, error) {
	if opts.Bases <= 0 {
		opts.Bases = 3
	}
	opts.Bases = min(opts.Bases, chunk.MaxDeltaBases)
	mb, _, err := st.Manifest(ctx, base)
	if err != nil {
		return Result{}, err
	}
	mt, _, err := st.Manifest(ctx, target)
	if err != nil {
		return Result{}, err
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		return Result{}, err
	}
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()

	inBase := make(map[chunk.ID]bool, len(mb.Entries))
	for _, e := range mb.Entries {
		inBase[e.ID] = true
	}
	baseOff := mb.Offsets()
	raws := make(map[chunk.ID][]byte)
	rawOf := func(e manifest.Entry) ([]byte, error) {
		if r, ok := raws[e.ID]; ok {
			return r, nil
		}
		obj, err := st.Chunk(ctx, e.ID)
		if err != nil {
			return nil, err
		}
		r, err := codec.Open(nil, e.ID, obj, int(e.Size))
		if err != nil {
			return nil, err
		}
		raws[e.ID] = r
		return r, nil
	}

	out := *mt
	out.Entries = append([]manifest.Entry(nil), mt.Entries...)
	out.Deltas = make([]manifest.Delta, len(mt.Entries))
	out.Bases = nil
	out.BaseNarHash = base
	baseIndex := make(map[chunk.ID]uint32)
	var res Result
	var off uint64
	for i, e := range mt.Entries {
		start := off
		off += uint64(e.Size)
		if inBase[e.ID] || e.Size > chunk.MaxDeltaChunk || len(mb.Entries) == 0 {
			continue
		}
		// The base chunk at the same relative offset, then its neighbours.
		pos := start * mb.NarSize / max(mt.NarSize, 1)
		j := sort.Search(len(baseOff), func(k int) bool { return baseOff[k] > pos }) - 1
		lo := max(j-(opts.Bases-1)/2, 0)
		hi := min(lo+opts.Bases, len(mb.Entries))
		var dict []byte
		var ids []chunk.ID
		var sizes []uint32
		for _, be := range mb.Entries[lo:hi] {
			if len(dict)+int(be.Size) > chunk.MaxDictSize || containsID(ids, be.ID) {
				continue
			}
			r, err := rawOf(be)
			if err != nil {
				return Result{}, fmt.Errorf("base chunk %s: %w", be.ID, err)
			}
			dict = append(dict, r...)
			ids = append(ids, be.ID)
			sizes = append(sizes, be.Size)
		}
		if len(ids) == 0 {
			continue
		}
		raw, err := rawOf(e)
		if err != nil {
			return Result{}, fmt.Errorf("chunk %s: %w", e.ID, err)
		}
		obj, err := dc.EncodeDelta(nil, raw, dict)
		if err != nil {
			return Result{}, err
		}
		if len(obj) >= int(e.StoredSize) {
			continue
		}
		if err := st.Backend().Put(ctx, chunkstore.DeltaKey(chunk.DeltaID(e.ID, ids)), obj); err != nil {
			return Result{}, fmt.Errorf("writing delta: %w", err)
		}
		d := manifest.Delta{StoredSize: uint32(len(obj))}
		for k, id := range ids {
			x, ok := baseIndex[id]
			if !ok {
				x = uint32(len(out.Bases))
				baseIndex[id] = x
				out.Bases = append(out.Bases, manifest.BaseChunk{ID: id, Size: sizes[k]})
			}
			d.Bases = append(d.Bases, x)
		}
		out.Deltas[i] = d
		res.Deltas++
		res.DeltaBytes += int64(len(obj))
		res.FullBytes += int64(e.StoredSize)
	}
	if len(out.Bases) == 0 {
		return Result{}, fmt.Errorf("no chunk of NAR %s has a delta smaller than itself", manifest.Key(target))
	}
	if err := st.PutManifest(ctx, &out); err != nil {
		return Result{}, err
	}
	res.Manifest = &out
	return res, nil
}

func containsID(ids []chunk.ID, id chunk.ID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
