package publish

import (
	"bytes"
	"context"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"golang.org/x/sync/errgroup"
)

// primary decides, for one NAR published into a delta-primary store, how each chunk
// the store lacks is kept:
//
//   - in the base NAR (nothing written) when the base has it without a full object
//     and the entry stays within the bound;
//   - as its delta only when it gets one (kept when at most 90% of its full object)
//     and the entry stays within the bound;
//   - else as a full object, a keyframe: no base, no usable delta, a chain too deep,
//     or a chunk too large for a delta. A keyframe keeps a delta it got, for clients
//     that hold the base.
//
// Whether a delta is usable is known only once it is made, in the background: chunks
// wait in a queue in NAR order, so that the full objects still go to the packer in
// NAR order, and the queue holds at most about a pack's worth of objects.
type primary struct {
	p      *Publisher
	base   *deltaBase // nil: no base, every new chunk is a keyframe
	deltas *deltaSet
	byID   map[chunk.ID]*decision
	queue  []queued
	bytes  int // of the objects in the queue
	// anchor is the first chunk referred to the base, with its bytes: a NAR made of
	// nothing else gets it as a full object, since a packed manifest needs a location.
	anchor *decision

	deltaOnly, inBase, capped int64
}

type queued struct {
	idx  int
	d    *decision
	cost int
}

// decision is how one chunk is kept; every entry of the NAR with its ID shares it.
type decision struct {
	id    chunk.ID
	first int // the entry whose delta decides
	form  manifest.Form
	depth int
	// obj is its full object: a keyframe's, or, while the delta is being made, the
	// default-level object the delta is priced against; raw its bytes, kept only to
	// encode it again at the keyframe level should it become a keyframe.
	obj, raw []byte
	ready    chan struct{} // nil when decided; closed once the delta is made or not
	resolved bool
	ref      *objRef // its full object, once claimed
}

func newPrimary(p *Publisher, base *deltaBase, deltas *deltaSet) *primary {
	return &primary{p: p, base: base, deltas: deltas, byID: map[chunk.ID]*decision{}}
}

// decide queues entry idx, chunk id, and decides how it is kept, or starts its delta
// and decides once that is made. bases and inBase are what the aligner said.
func (q *primary) decide(mctx context.Context, makers *errgroup.Group, idx int, id chunk.ID, raw []byte, bases []int, inBase bool) *decision {
	if d, ok := q.byID[id]; ok {
		q.queue = append(q.queue, queued{idx: idx, d: d})
		return d
	}
	p, c := q.p, q.p.chains
	d := &decision{id: id, first: idx, form: manifest.Full}
	q.byID[id] = d
	switch {
	case q.base == nil:
		d.obj = p.keyframes.Encode(nil, raw)
	case inBase:
		if depth := 1 + c.depth(q.base.node, id); depth <= c.maxChain {
			d.form, d.depth = manifest.InBase, depth
			q.inBase++
			if q.anchor == nil {
				d.raw = bytes.Clone(raw)
				q.anchor = d
			}
		} else {
			q.capped++
			d.obj = p.keyframes.Encode(nil, raw)
		}
	case len(bases) > 0:
		bcs := make([]manifest.BaseChunk, len(bases))
		for k, bi := range bases {
			e := q.base.m.Entries[bi]
			bcs[k] = manifest.BaseChunk{ID: e.ID, Size: e.Size}
		}
		obj := p.codec.Encode(nil, raw)
		raw := bytes.Clone(raw)
		full := len(obj)
		if depth := c.deltaDepth(q.base.node, bcs); depth <= c.maxChain {
			d.depth, d.obj, d.ready = depth, obj, make(chan struct{})
			if p.keyframes != p.codec {
				d.raw = raw
			}
			makers.Go(func() error {
				defer close(d.ready)
				return p.makeDelta(mctx, q.deltas, idx, bases, id, raw, full)
			})
		} else {
			q.capped++
			d.obj = obj
			if p.keyframes != p.codec {
				d.obj = p.keyframes.Encode(nil, raw)
			}
			makers.Go(func() error { return p.makeDelta(mctx, q.deltas, idx, bases, id, raw, full) })
		}
	default:
		d.obj = p.keyframes.Encode(nil, raw)
	}
	q.queue = append(q.queue, queued{idx: idx, d: d, cost: len(d.obj)})
	q.bytes += len(d.obj)
	return d
}

// storedSize is what Build records for an entry until its location is known.
func (d *decision) storedSize() int { return 0 }

func (d *decision) isReady() bool {
	if d.ready == nil {
		return true
	}
	select {
	case <-d.ready:
		return true
	default:
		return false
	}
}

func (d *decision) wait(ctx context.Context) error {
	if d.ready == nil {
		return nil
	}
	select {
	case <-d.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// front returns the decision at the head of the queue, resolved if its delta is
// made, and the entry it is for.
func (q *primary) front() (*decision, int, bool) {
	if len(q.queue) == 0 {
		return nil, 0, false
	}
	it := q.queue[0]
	d := it.d
	if d.ready != nil && !d.resolved && d.isReady() {
		d.resolved = true
		q.deltas.mu.Lock()
		_, has := q.deltas.recs[d.first]
		q.deltas.mu.Unlock()
		switch ref, known := q.p.packer.lookup(chunkstore.KindChunk, d.id); {
		case known:
			// Another NAR of the run wrote it meanwhile: a full object costs nothing.
			d.ref = ref
		case has:
			d.form = manifest.DeltaOnly
			q.deltaOnly++
		case d.raw != nil:
			d.obj = q.p.keyframes.Encode(nil, d.raw)
		}
		if d.form != manifest.Full || d.ref != nil {
			d.obj = nil
		}
		d.raw = nil
	}
	return d, it.idx, true
}

// pop drops the head of the queue.
func (q *primary) pop() {
	q.bytes -= q.queue[0].cost
	q.queue[0] = queued{}
	q.queue = q.queue[1:]
}

// keyframe hands over d's full object.
func (q *primary) keyframe(d *decision) []byte {
	obj := d.obj
	d.obj = nil
	return obj
}

// located reports whether the NAR has a location: a chunk object or a delta.
func (q *primary) located(refs []*objRef) bool {
	for _, r := range refs {
		if r != nil {
			return true
		}
	}
	return q.deltaOnly > 0
}

// anchorFull makes the anchor chunk a keyframe, for the caller to claim; nil when
// there is none.
func (q *primary) anchorFull() *decision {
	d := q.anchor
	if d == nil {
		return nil
	}
	d.form = manifest.Full
	q.inBase--
	return d
}

// shareDeltas gives every entry of a delta-only chunk the delta of its first entry.
func (q *primary) shareDeltas(m *manifest.Manifest, refs []*objRef) {
	q.deltas.mu.Lock()
	defer q.deltas.mu.Unlock()
	for i, e := range m.Entries {
		d, ok := q.byID[e.ID]
		if !ok || refs[i] != nil || d.form != manifest.DeltaOnly || i == d.first {
			continue
		}
		q.deltas.recs[i] = q.deltas.recs[d.first]
	}
}

// node is how the NAR keeps each chunk, for NARs based on it.
func (q *primary) node(m *manifest.Manifest, refs []*objRef) *chainNode {
	n := &chainNode{nar: m.NarHash, byID: make(map[chunk.ID]*chainEntry, len(m.Entries))}
	if q.base != nil {
		n.base = q.base.node
	}
	for i, e := range m.Entries {
		ce := &chainEntry{form: manifest.Full, size: e.Size}
		if d, ok := q.byID[e.ID]; ok && refs[i] == nil {
			ce.form, ce.depth = d.form, d.depth
			if d.form == manifest.DeltaOnly {
				rec := q.deltas.recs[d.first]
				ce.delta = rec.id
				for _, bi := range rec.bases {
					be := q.base.m.Entries[bi]
					ce.bases = append(ce.bases, manifest.BaseChunk{ID: be.ID, Size: be.Size})
				}
			}
		}
		if prev, ok := n.byID[e.ID]; ok && prev.depth >= ce.depth {
			continue
		}
		n.byID[e.ID] = ce
	}
	return n
}
