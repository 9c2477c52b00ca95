package publish

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
)

// chains knows, for one run on a delta-primary store, how the NARs that are bases
// store each chunk and how deep the chain of each is: read from their manifests (and
// their bases' manifests, down the chain) or, for NARs of this run, from what their
// publish decided. It also rebuilds a base chunk that has no full object, which a
// delta against it needs.
//
// Depths are only needed up to the bound: a node loaded with budget b may read b
// more manifests down its chain, and then reports each chunk's depth exactly when it
// is at most b, and as maxChain+1 (too deep) otherwise. A base is loaded with budget
// maxChain, so every chunk a NAR could build on has its exact depth, and the whole
// chain under it is loaded.
type chains struct {
	p        *Publisher
	maxChain int

	mu    sync.Mutex
	nodes map[[32]byte]*chainNode
}

func newChains(p *Publisher, maxChain int) *chains {
	return &chains{p: p, maxChain: maxChain, nodes: map[[32]byte]*chainNode{}}
}

// chainNode is one NAR of a chain.
type chainNode struct {
	nar    [32]byte
	m      *manifest.Manifest // as read from the store; nil for a NAR of this run
	budget int
	// base is the node of the NAR's base, when the NAR has entries stored there and
	// that node could be loaded.
	base *chainNode
	byID map[chunk.ID]*chainEntry
	// chained: some chunk of the NAR is stored in its base's chain.
	chained bool
	// from is the job of a NAR of this run.
	from *job
}

// chainEntry is how a NAR stores one chunk.
type chainEntry struct {
	form  manifest.Form
	depth int // capped at maxChain+1
	size  uint32
	// bases and delta: a delta-only chunk's base chunks and delta ID.
	bases []manifest.BaseChunk
	delta chunk.ID
	// full and deltaAt are where its objects lie, from a store manifest; n is 0
	// when unknown.
	full, deltaAt objLoc
}

type objLoc struct {
	pack chunk.ID
	off  uint64
	n    uint32
}

// depth is the depth of chunk id in n, maxChain+1 when n lacks it.
func (c *chains) depth(n *chainNode, id chunk.ID) int {
	if n == nil {
		return c.maxChain + 1
	}
	if e, ok := n.byID[id]; ok {
		return e.depth
	}
	return c.maxChain + 1
}

// load returns the node of the base NAR h, whose manifest m has been read, for
// publishing target. A chain that cannot be followed (a base manifest missing or
// unreadable, a cycle back to target) is logged and its entries count as too deep:
// those chunks get full objects, the publish goes on.
func (c *chains) load(ctx context.Context, h, target [32]byte, m *manifest.Manifest) *chainNode {
	return c.node(ctx, h, m, c.maxChain, map[[32]byte]bool{target: true})
}

// node returns the node of NAR h loaded with at least budget, reading its manifest
// unless m is given. path holds the NARs on the way here, to stop a cycle.
func (c *chains) node(ctx context.Context, h [32]byte, m *manifest.Manifest, budget int, path map[[32]byte]bool) *chainNode {
	c.mu.Lock()
	have := c.nodes[h]
	c.mu.Unlock()
	if have != nil && have.budget >= budget {
		return have
	}
	if have != nil && have.m != nil {
		m = have.m
	}
	if m == nil {
		var err error
		if m, _, err = c.p.dst.Manifest(ctx, h); err != nil {
			c.p.log.Warn("delta-primary: a base manifest of the chain is unreadable; the chunks stored through it get full objects", "manifest", manifest.Key(h), "err", err)
			return nil
		}
	}
	n := &chainNode{nar: h, m: m, budget: budget, byID: make(map[chunk.ID]*chainEntry, len(m.Entries)), chained: m.Chained()}
	if !m.Chained() {
		n.budget = c.maxChain // every entry has a full object: exact at any budget
	}
	if m.Chained() && budget > 0 {
		switch {
		case path[m.BaseNarHash]:
			c.p.log.Warn("delta-primary: the chain of a base NAR comes back to a NAR on it; the chunks stored through it get full objects", "manifest", manifest.Key(h), "base", manifest.Key(m.BaseNarHash))
		default:
			path[h] = true
			n.base = c.node(ctx, m.BaseNarHash, nil, budget-1, path)
			delete(path, h)
		}
	}
	for i, e := range m.Entries {
		ce := &chainEntry{form: m.Form(i), size: e.Size}
		switch ce.form {
		case manifest.Full:
			if m.Packed() {
				l := m.Locs[i]
				ce.full = objLoc{m.Packs[l.Pack], l.Offset, e.StoredSize}
			}
		case manifest.DeltaOnly:
			bases, did, size, _ := m.DeltaOf(i)
			ce.bases, ce.delta = bases, did
			l := m.Deltas[i].Loc
			ce.deltaAt = objLoc{m.Packs[l.Pack], l.Offset, size}
			ce.depth = c.deltaDepth(n.base, bases)
		case manifest.InBase:
			ce.depth = min(c.maxChain+1, 1+c.depth(n.base, e.ID))
		}
		// A chunk listed twice counts at its deepest; a reader may take either.
		if prev, ok := n.byID[e.ID]; ok && prev.depth >= ce.depth {
			continue
		}
		n.byID[e.ID] = ce
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if have := c.nodes[h]; have == nil || have.budget < n.budget {
		c.nodes[h] = n
	}
	return n
}

// deltaDepth is the depth of a delta-only chunk whose delta has these base chunks in
// the base NAR base.
func (c *chains) deltaDepth(base *chainNode, bases []manifest.BaseChunk) int {
	d := 0
	for _, b := range bases {
		d = max(d, c.depth(base, b.ID))
	}
	return min(c.maxChain+1, 1+d)
}

// add records the node of a NAR this run is publishing, decided before its manifest
// is written: later NARs of the run build on it.
func (c *chains) add(n *chainNode) {
	n.budget = c.maxChain
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes[n.nar] = n
}

// hold makes sure the chain j's manifest runs through is in the store before the
// manifest is written: the bases of this run on it have written their manifests, and
// every base manifest down the chain is refreshed, so a concurrent gc spares it
// (chunkstore/maintain). A base manifest that is gone fails the NAR, as a collected
// pack does; a rerun publishes it against what the store holds then.
func (c *chains) hold(ctx context.Context, j *job) error {
	// The packs too: gc re-reads the manifests refreshed since it marked, but one
	// refreshed after that look finds only the packs' times.
	packs := map[chunk.ID]bool{}
	for n := j.chain.base; n != nil; n = n.base {
		if from := n.from; from != nil {
			select {
			case <-from.committed:
			case <-ctx.Done():
				return ctx.Err()
			}
			if !from.committedOK {
				return fmt.Errorf("the base NAR %s was not published", from.ni.StorePath)
			}
		}
		ok, err := c.p.dst.RefreshManifest(ctx, n.nar)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the manifest %s of the NAR's chain of bases was collected while the NAR was being published: %w", manifest.Key(n.nar), shoal.ErrNotFound)
		}
		if n.m != nil {
			for _, id := range n.m.Packs {
				if packs[id] {
					continue
				}
				packs[id] = true
				if ok, err := c.p.dst.RefreshPack(ctx, id); err != nil {
					return err
				} else if !ok {
					return fmt.Errorf("pack %s of the NAR's chain of bases was collected while the NAR was being published: %w", id, shoal.ErrNotFound)
				}
			}
		}
		if !n.chained {
			return nil // the chain ends here
		}
	}
	return nil
}

// raw returns the bytes of chunk id of the NAR of n, from the cache of base chunks,
// its full object, or rebuilt through the chain.
func (c *chains) raw(ctx context.Context, n *chainNode, id chunk.ID, size uint32) ([]byte, error) {
	return c.p.bases.getWith(ctx, id, func(ctx context.Context) ([]byte, error) {
		return c.rebuild(ctx, n, id, size)
	})
}

// rebuild makes chunk id of the NAR of n. Only chunks within the bound are rebuilt:
// their chain is loaded and strictly shallower at each step, so rebuilding ends.
func (c *chains) rebuild(ctx context.Context, n *chainNode, id chunk.ID, size uint32) ([]byte, error) {
	p := c.p
	obj, err := p.packer.object(ctx, chunkstore.KindChunk, id)
	if err == nil {
		return p.codec.Open(nil, id, obj, int(size))
	}
	if !errors.Is(err, shoal.ErrNotFound) {
		return nil, err
	}
	var e *chainEntry
	if n != nil {
		e = n.byID[id]
	}
	if e == nil || e.depth > c.maxChain {
		return nil, fmt.Errorf("chunk %s: no full object, and no chain within %d manifests: %w", id, c.maxChain, shoal.ErrNotFound)
	}
	switch e.form {
	case manifest.Full:
		if e.full.n == 0 {
			return nil, fmt.Errorf("chunk %s: %w", id, shoal.ErrNotFound)
		}
		obj, err := p.dst.ReadPackRange(ctx, e.full.pack, e.full.off, e.full.n)
		if err != nil {
			return nil, err
		}
		return p.codec.Open(nil, id, obj, int(size))
	case manifest.InBase:
		return c.rebuild(ctx, n.base, id, size)
	}
	var dict []byte
	for _, b := range e.bases {
		raw, ok := p.bases.peek(b.ID)
		if !ok {
			if raw, err = c.rebuild(ctx, n.base, b.ID, b.Size); err != nil {
				return nil, fmt.Errorf("rebuilding chunk %s: base chunk %s: %w", id, b.ID, err)
			}
			p.bases.put(b.ID, raw)
		}
		dict = append(dict, raw...)
	}
	obj, err = p.packer.object(ctx, chunkstore.KindDelta, e.delta)
	if errors.Is(err, shoal.ErrNotFound) && e.deltaAt.n > 0 {
		obj, err = p.dst.ReadPackRange(ctx, e.deltaAt.pack, e.deltaAt.off, e.deltaAt.n)
	}
	if err != nil {
		return nil, fmt.Errorf("rebuilding chunk %s: %w", id, err)
	}
	return p.deltas.OpenDelta(nil, id, obj, dict, int(size))
}

// fullCodec encodes the full chunk objects of the store being published.
func (p *Publisher) fullCodec() *chunk.Codec {
	if p.chains != nil {
		return p.keyframes
	}
	return p.codec
}
