package publish

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"golang.org/x/sync/errgroup"
)

// publishPacked is publishOne for a packed store (layout 3). The NAR's new chunk
// objects go to the packer in NAR order, in segments of a pack's size so a large NAR
// is never held whole, and its new delta objects follow in NAR order once all are
// made. What it returns to Run is the rest of the work, r.commit: waiting until every
// object the manifest points at is in a written pack, then writing the manifest, the
// NAR URL index entry and the narinfo. Run starts that in the background, so this NAR's
// job slot goes to the next NAR while its last pack fills.
func (p *Publisher) publishPacked(ctx context.Context, j *job, base *deltaBase, nar io.Reader) (result, error) {
	var r result
	ni := j.ni
	var (
		refs    []*objRef // per entry, its chunk object
		pending []*objRef // claimed by this NAR, not yet handed to the packer
		size    int
	)
	// Claimed objects must reach the packer even when this NAR fails: other NARs of
	// the run may wait for them.
	defer func() { p.packer.add(pending) }()

	// Deltas are made in the background as today; their objects wait in the set.
	makers, mctx := errgroup.WithContext(ctx)
	makers.SetLimit(16)
	var deltas *deltaSet
	if base != nil {
		deltas = newDeltaSet(base, ni.NarSize, p.opts.DeltaBases)
	}
	// run is the current run of chunks the store already holds back to back in one
	// pack. A run shorter than MinReuseRun is written again, beside this NAR's new
	// chunks (see Options.MinReuseRun); its objects are kept until that is known.
	var run struct {
		idxs  []int
		objs  [][]byte
		bytes int
		seq   int64
		end   uint64
	}
	closeRun := func() {
		if len(run.idxs) > 0 && run.bytes < p.opts.MinReuseRun {
			for k, i := range run.idxs {
				c := p.packer.copyOf(chunkstore.KindChunk, refs[i].key.id, run.objs[k])
				refs[i] = c
				pending = append(pending, c)
				size += len(run.objs[k])
				r.rewritten++
				r.rewrittenBytes += int64(len(run.objs[k]))
			}
		}
		run.idxs, run.objs, run.bytes = run.idxs[:0], nil, 0
	}
	// In a delta-primary store a new chunk's fate waits for its delta: objects go to the
	// packer in NAR order from the front of a queue, once decided (see primary).
	var dp *primary
	if p.chains != nil {
		dp = newPrimary(p, base, deltas)
	}
	claimFull := func(id chunk.ID, obj []byte) *objRef {
		ref, claimed := p.packer.claim(chunkstore.KindChunk, id, obj)
		if claimed {
			pending = append(pending, ref)
			size += len(obj)
			r.newChunks++
			r.newBytes += int64(len(obj))
			if dp != nil {
				r.keyframes++
				r.keyframeBytes += int64(len(obj))
			}
		}
		return ref
	}
	// drain hands the decided front of the queue to the packer. It waits for an
	// undecided front while the queue holds a pack's worth or more, or, with all,
	// until the queue is empty.
	drain := func(ctx context.Context, all bool) error {
		for {
			d, idx, ok := dp.front()
			if !ok {
				return nil
			}
			if !d.isReady() {
				if !all && dp.bytes < p.packer.target {
					return nil
				}
				if err := d.wait(ctx); err != nil {
					return err
				}
				continue // front resolves it now
			}
			if d.ref == nil && d.form == manifest.Full {
				d.ref = claimFull(d.id, dp.keyframe(d))
			}
			refs[idx] = d.ref
			dp.pop()
		}
	}
	var off uint64
	m, err := manifest.Build(ctx, nar, p.opts.Params, func(id chunk.ID, raw []byte) (int, error) {
		idx, at := len(refs), off
		off += uint64(len(raw))
		ref, ok := p.packer.lookup(chunkstore.KindChunk, id)
		var bases []int
		var inBase bool
		if deltas != nil {
			bases, inBase = deltas.next(id, at, raw)
		}
		var obj []byte
		full := 0
		switch {
		case ok:
			full = int(ref.length)
			if seq, o, placed := p.packer.position(ref); placed && p.opts.MinReuseRun > 0 {
				if len(run.idxs) == 0 || seq != run.seq || o != run.end {
					closeRun()
					run.seq = seq
				}
				run.end = o + uint64(ref.length)
				run.idxs = append(run.idxs, idx)
				run.bytes += int(ref.length)
				if run.bytes < p.opts.MinReuseRun {
					run.objs = append(run.objs, p.fullCodec().Encode(nil, raw))
				} else {
					run.objs = nil // long enough: kept where it is
				}
			} else {
				closeRun()
			}
		case dp != nil:
			// A chunk without a full object of its own does not break a run of reused
			// ones: a reader fetches it from elsewhere either way.
			d := dp.decide(mctx, makers, idx, id, raw, bases, inBase)
			refs = append(refs, nil)
			if err := drain(ctx, false); err != nil {
				return 0, err
			}
			if size >= p.packer.target {
				p.packer.add(pending)
				pending, size = nil, 0
			}
			return d.storedSize(), nil
		default:
			closeRun()
			obj = p.codec.Encode(nil, raw)
			full = len(obj)
		}
		if len(bases) > 0 {
			raw := bytes.Clone(raw)
			makers.Go(func() error { return p.makeDelta(mctx, deltas, idx, bases, id, raw, full) })
		}
		if !ok {
			ref = claimFull(id, obj)
		}
		refs = append(refs, ref)
		if size >= p.packer.target {
			p.packer.add(pending)
			pending, size = nil, 0
		}
		return int(ref.length), nil
	})
	if err == nil && dp != nil {
		err = drain(ctx, true)
	}
	if err == nil {
		closeRun()
	}
	r.chunks = int64(len(refs))
	if werr := makers.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("making deltas: %w", werr)
	}
	if err != nil {
		return r, fmt.Errorf("chunking NAR: %w", err)
	}
	if m.NarHash != ni.NarHash || m.NarSize != ni.NarSize {
		return r, fmt.Errorf("%w: got %d bytes hashing sha256:%s, narinfo says %d bytes, %s",
			nixcache.ErrNarMismatch, m.NarSize, manifest.Key(m.NarHash), ni.NarSize, ni.NarHashString())
	}
	if dp != nil && len(m.Entries) > 0 && !dp.located(refs) {
		// Every entry is in the base: the manifest needs one location to be packed.
		d := dp.anchorFull()
		if d == nil {
			return r, errors.New("delta-primary: a NAR without a stored chunk, a delta or a chunk in its base")
		}
		d.ref = claimFull(d.id, p.keyframes.Encode(nil, d.raw))
		for i, e := range m.Entries {
			if e.ID == d.id {
				refs[i] = d.ref
			}
		}
	}
	attrs := []any{"path", ni.StorePath, "nar_bytes", ni.NarSize, "chunks", r.chunks, "new_chunks", r.newChunks, "new_bytes", r.newBytes}
	deltaRefs := map[int]*objRef{}
	if deltas != nil {
		if dp != nil {
			// Every entry of a delta-only chunk carries its delta.
			dp.shareDeltas(m, refs)
		}
		deltas.attach(m)
		r.base = base.nar.StorePath
		r.deltas, r.deltaBytes, r.deltaSaved = deltas.count, deltas.bytes, deltas.saved
		attrs = append(attrs, "base", r.base, "deltas", r.deltas, "delta_bytes", r.deltaBytes, "bytes_saved", r.deltaSaved)
		// The delta run follows the chunk objects, in NAR order.
		idxs := make([]int, 0, len(deltas.recs))
		for i := range deltas.recs {
			idxs = append(idxs, i)
		}
		slices.Sort(idxs)
		for _, i := range idxs {
			rec := deltas.recs[i]
			ref, claimed := p.packer.claim(chunkstore.KindDelta, rec.id, rec.obj)
			if claimed {
				pending = append(pending, ref)
			}
			deltaRefs[i] = ref
		}
	} else if j.base == nil && p.opts.Deltas {
		attrs = append(attrs, "base", "none")
	}
	if dp != nil {
		n := dp.node(m, refs)
		r.deltaOnly, r.inBase, r.chainCapped = dp.deltaOnly, dp.inBase, dp.capped
		attrs = append(attrs, "delta_only", r.deltaOnly, "in_base", r.inBase, "keyframes", r.keyframes, "chain_capped", r.chainCapped)
		if base != nil && r.deltaOnly+r.inBase > 0 {
			m.BaseNarHash = base.nar.NarHash
		}
		n.chained, n.from = r.deltaOnly+r.inBase > 0, j
		j.chain = n
		p.chains.add(n)
	}
	p.packer.add(pending)
	pending = nil
	// A NAR based on this one reads the entries while commit fills in locations.
	j.m = &manifest.Manifest{NarHash: m.NarHash, NarSize: m.NarSize, Chunker: m.Chunker, Entries: slices.Clone(m.Entries)}

	r.commit = func(ctx context.Context) error {
		if err := locate(ctx, m, refs, deltaRefs); err != nil {
			return fmt.Errorf("waiting for the NAR's objects to be stored: %w", err)
		}
		all := slices.DeleteFunc(slices.Clone(refs), func(r *objRef) bool { return r == nil })
		for _, r := range deltaRefs {
			all = append(all, r)
		}
		if err := p.packer.refresh(ctx, all); err != nil {
			return fmt.Errorf("refreshing the packs the NAR reuses: %w", err)
		}
		if m.Chained() {
			if err := p.chains.hold(ctx, j); err != nil {
				return err
			}
		}
		if err := p.dst.PutManifest(ctx, m); err != nil {
			return err
		}
		if err := p.dst.PutNarURL(ctx, ni.URL, ni.HashPart()); err != nil {
			return err
		}
		if err := p.putName(ctx, ni); err != nil {
			return err
		}
		if err := p.dst.PutNarInfo(ctx, ni.HashPart(), ni.Raw); err != nil {
			return err
		}
		p.log.Info("published", attrs...)
		return nil
	}
	return r, nil
}

// locate waits until every object of m is in a written pack and records where, with
// the packs numbered in the order the NAR first uses them. A delta or chunk object
// whose length differs from what m says (a copy written by another shoal, compressed
// differently) takes the stored copy's length.
func locate(ctx context.Context, m *manifest.Manifest, refs []*objRef, deltaRefs map[int]*objRef) error {
	packIdx := map[chunk.ID]uint32{}
	loc := func(r *objRef) (manifest.Loc, error) {
		pack, off, err := resolved(ctx, r)
		if err != nil {
			return manifest.Loc{}, err
		}
		i, ok := packIdx[pack]
		if !ok {
			i = uint32(len(m.Packs))
			packIdx[pack] = i
			m.Packs = append(m.Packs, pack)
		}
		return manifest.Loc{Pack: i, Offset: off}, nil
	}
	if len(refs) == 0 {
		return nil
	}
	m.Locs = make([]manifest.Loc, len(refs))
	for i, r := range refs {
		m.Entries[i].StoredSize = 0
		if r != nil {
			// nil: a delta-primary entry without a chunk object of its own.
			l, err := loc(r)
			if err != nil {
				return err
			}
			m.Locs[i] = l
			m.Entries[i].StoredSize = r.length
		}
		if r, ok := deltaRefs[i]; ok {
			l, err := loc(r)
			if err != nil {
				return err
			}
			m.Deltas[i].Loc = l
			m.Deltas[i].StoredSize = r.length
		}
	}
	return nil
}
