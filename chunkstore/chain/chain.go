// Package chain rebuilds the chunks of a delta-primary store (manifest version 4),
// where a chunk may be kept only as a delta against chunks of the previous release's
// NAR, or only in that NAR's manifest. Such a chunk is rebuilt by walking the chain
// of base manifests down to chunk objects and decoding the deltas back up.
//
// A Resolver plans a window of entries at a time: it reads the manifests along the
// chain, works out which objects every wanted chunk needs, and fetches them level by
// level (first every chunk object, then the deltas whose bases are all at hand, and
// so on up), each level with one coalesced PackReader call. A NAR rebuilt from chains
// thus costs a few ranged requests per level and window, not one per object. Decoded
// chunks stay in a bounded cache of hot bases, since the next window, and the next
// NAR of the same package, decodes against the same ones.
//
// Nothing is trusted: every object is checked against its chunk ID as it is decoded
// (chunkstore.PackReader), so a wrong manifest or object costs a failed read, never a
// wrong byte.
package chain

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/lru"
	"github.com/shoal-nix/shoal/manifest"
)

// DefaultMaxDepth bounds how many manifests a reader walks for one chunk when
// Options.MaxDepth is 0: well past what publish writes (publish --max-chain), so only
// a broken or hostile store reaches it.
const DefaultMaxDepth = 64

// Options tune a Resolver. Zero fields take the defaults.
type Options struct {
	// CacheBytes bounds the decoded chunks kept between calls (hot bases); default
	// 128 MiB. 0 takes the default; negative keeps none.
	CacheBytes int64
	// Window is how many NAR bytes Entries plans and fetches at once; default 16 MiB.
	Window int
	// MaxDepth bounds the manifests walked for one chunk; default DefaultMaxDepth.
	MaxDepth int
	// Manifests bounds the parsed manifests kept; default 64.
	Manifests int
	// Local, when set, supplies a chunk's bytes without a read (a daemon's local
	// cache); what it returns must already be checked against the ID.
	Local func(id chunk.ID) ([]byte, bool)
}

// Resolver rebuilds entries of packed manifests (versions 3 and 4) from a store. It
// is safe for concurrent use.
type Resolver struct {
	st   *chunkstore.Store
	pr   *chunkstore.PackReader
	opts Options
	hot  *lru.Cache[chunk.ID, hotChunk]
	mans *lru.Cache[[32]byte, *baseNAR]
}

// Stats counts what a call to Entries did, for metrics and measurements.
type Stats struct {
	Manifests int64 // base manifests read from the store
	Objects   int64 // objects fetched: chunk objects and deltas
	Bytes     int64 // bytes read for them, gaps read through included
	Requests  int64 // ranged requests those took
	Decoded   int64 // deltas decoded
}

// New returns a Resolver of st that reads objects with pr, the caller's pack reader
// (shared with its reads of full chunks, so one set of decoders serves both).
func New(st *chunkstore.Store, pr *chunkstore.PackReader, opts Options) *Resolver {
	if opts.CacheBytes == 0 {
		opts.CacheBytes = 128 << 20
	}
	if opts.Window <= 0 {
		opts.Window = 16 << 20
	}
	if opts.MaxDepth <= 0 {
		opts.MaxDepth = DefaultMaxDepth
	}
	if opts.Manifests <= 0 {
		opts.Manifests = 64
	}
	return &Resolver{
		st: st, pr: pr, opts: opts,
		hot:  lru.New[chunk.ID, hotChunk](max(opts.CacheBytes, 0), 0),
		mans: lru.New[[32]byte, *baseNAR](int64(opts.Manifests), 0),
	}
}

// hotChunk is a decoded chunk kept between calls, with the chunk object it came from
// when it was read as one.
type hotChunk struct{ obj, raw []byte }

// Chunk returns the bytes of entry i of m, checked against its ID.
func (r *Resolver) Chunk(ctx context.Context, m *manifest.Manifest, i int) ([]byte, error) {
	var out []byte
	err := r.each(ctx, m, []int{i}, nil, func(_ int, _, raw []byte) error {
		out = raw
		return nil
	})
	return out, err
}

// Entries calls fn with the bytes of the entries idx of m, in that order, a window of
// Options.Window NAR bytes at a time, and with the chunk object they were decoded from
// when they were read as one (nil for a chunk rebuilt from a delta or supplied by
// Local; a caller that needs the stored object checks its length against the entry's
// StoredSize). fn must not modify either: they may be shared with the cache of hot
// bases. The first entry that cannot be rebuilt ends Entries with an error naming it.
// It returns what this call fetched.
func (r *Resolver) Entries(ctx context.Context, m *manifest.Manifest, idx []int, fn func(i int, obj, raw []byte) error) (Stats, error) {
	var st Stats
	for start := 0; start < len(idx); {
		end, size := start, 0
		for end < len(idx) && (end == start || size+int(m.Entries[idx[end]].Size) <= r.opts.Window) {
			size += int(m.Entries[idx[end]].Size)
			end++
		}
		if err := r.each(ctx, m, idx[start:end], &st, fn); err != nil {
			return st, err
		}
		start = end
	}
	return st, nil
}

// Cost is what rebuilding the given entries of m would fetch: the stored bytes of
// every object along their chains that is neither cached nor Local, each counted
// once. It reads the chain's manifests, not the objects.
func (r *Resolver) Cost(ctx context.Context, m *manifest.Manifest, entries []int) (uint64, error) {
	p := r.newPlan()
	for _, i := range entries {
		if _, err := p.visit(ctx, m, i, 0); err != nil {
			return 0, err
		}
	}
	var n uint64
	for _, nd := range p.nodes {
		if nd.raw == nil {
			n += uint64(nd.read.Length)
		}
	}
	return n, nil
}

// each rebuilds the entries idx of m and hands them to fn in that order.
func (r *Resolver) each(ctx context.Context, m *manifest.Manifest, idx []int, st *Stats, fn func(i int, obj, raw []byte) error) error {
	p := r.newPlan()
	p.stats = st
	wanted := make([]*node, len(idx))
	for k, i := range idx {
		nd, err := p.visit(ctx, m, i, 0)
		if err != nil {
			return fmt.Errorf("rebuilding entry %d (chunk %s) of %s: %w", i, m.Entries[i].ID, manifest.Key(m.NarHash), err)
		}
		wanted[k] = nd
	}
	if err := p.fetch(ctx); err != nil {
		return err
	}
	for k, nd := range wanted {
		if nd.err != nil {
			return fmt.Errorf("rebuilding entry %d (chunk %s) of %s: %w", idx[k], nd.id, manifest.Key(m.NarHash), nd.err)
		}
		if err := fn(idx[k], nd.obj, nd.raw); err != nil {
			return err
		}
	}
	return nil
}

// node is one chunk a plan needs: at hand (raw), or to be read as a chunk object
// (height 0) or as a delta against bases (height above all of theirs).
type node struct {
	id     chunk.ID
	height int
	read   chunkstore.PackRead
	bases  []*node // a delta's, in dictionary order
	obj    []byte  // the chunk object, when read as one
	raw    []byte
	err    error
	active bool // being visited: a chunk that needs itself is a cycle
}

type plan struct {
	r     *Resolver
	nodes map[chunk.ID]*node
	stats *Stats // the caller's, when it wants them; nil: none
}

func (r *Resolver) newPlan() *plan { return &plan{r: r, nodes: map[chunk.ID]*node{}} }

// visit plans entry i of m, hops manifests down the chain from the one asked for.
func (p *plan) visit(ctx context.Context, m *manifest.Manifest, i int, hops int) (*node, error) {
	e := m.Entries[i]
	if nd, ok := p.nodes[e.ID]; ok {
		if nd.active {
			return nil, fmt.Errorf("chunk %s needs itself through its chain", e.ID)
		}
		return nd, nil
	}
	if hops > p.r.opts.MaxDepth {
		return nil, fmt.Errorf("chain past %d manifests at chunk %s", p.r.opts.MaxDepth, e.ID)
	}
	nd := &node{id: e.ID}
	if c, ok := p.r.hot.Get(e.ID); ok {
		nd.obj, nd.raw = c.obj, c.raw
	} else if p.r.opts.Local != nil {
		if raw, ok := p.r.opts.Local(e.ID); ok {
			nd.raw = raw
		}
	}
	if nd.raw != nil {
		p.nodes[e.ID] = nd
		return nd, nil
	}
	switch m.Form(i) {
	case manifest.Full:
		rd, err := chunkstore.ChunkRead(m, i)
		if err != nil {
			return nil, err
		}
		nd.read = rd
		p.nodes[e.ID] = nd
		return nd, nil
	case manifest.InBase:
		bm, j, err := p.inBase(ctx, m, e.ID)
		if err != nil {
			return nil, err
		}
		return p.visit(ctx, bm, j, hops+1)
	}
	// Delta-only: its bases first, which may be deeper still.
	nd.active = true
	p.nodes[e.ID] = nd
	defer func() { nd.active = false }()
	bases, _, _, _ := m.DeltaOf(i)
	for _, b := range bases {
		bm, j, err := p.inBase(ctx, m, b.ID)
		if err != nil {
			delete(p.nodes, e.ID)
			return nil, fmt.Errorf("base chunk %s of chunk %s: %w", b.ID, e.ID, err)
		}
		bn, err := p.visit(ctx, bm, j, hops+1)
		if err != nil {
			delete(p.nodes, e.ID)
			return nil, err
		}
		nd.bases = append(nd.bases, bn)
		nd.height = max(nd.height, bn.height+1)
	}
	rd, _ := chunkstore.DeltaRead(m, i, nd.dict)
	nd.read = rd
	return nd, nil
}

// inBase finds chunk id among the entries of m's base NAR.
func (p *plan) inBase(ctx context.Context, m *manifest.Manifest, id chunk.ID) (*manifest.Manifest, int, error) {
	if m.BaseNarHash == ([32]byte{}) {
		return nil, 0, errors.New("the manifest names no base NAR")
	}
	b, read, err := p.r.manifest(ctx, m.BaseNarHash)
	if err != nil {
		return nil, 0, err
	}
	if read && p.stats != nil {
		p.stats.Manifests++
	}
	if j, ok := b.at[id]; ok {
		return b.m, j, nil
	}
	return nil, 0, fmt.Errorf("base NAR %s has no chunk %s", manifest.Key(m.BaseNarHash), id)
}

// dict concatenates the bases' bytes, which fetch has filled in by the time a delta's
// object arrives (bases are a level below).
func (nd *node) dict() ([]byte, error) {
	var n int
	for _, b := range nd.bases {
		if b.raw == nil {
			return nil, fmt.Errorf("base chunk %s: %w", b.id, cmpErr(b.err))
		}
		n += len(b.raw)
	}
	d := make([]byte, 0, n)
	for _, b := range nd.bases {
		d = append(d, b.raw...)
	}
	return d, nil
}

func cmpErr(err error) error {
	if err == nil {
		return errors.New("not rebuilt")
	}
	return err
}

// fetch reads every planned object a level at a time, lowest first, so each delta's
// bases are decoded before its own object is.
func (p *plan) fetch(ctx context.Context) error {
	var levels [][]*node
	for _, nd := range p.nodes {
		if nd.raw != nil {
			continue
		}
		for len(levels) <= nd.height {
			levels = append(levels, nil)
		}
		levels[nd.height] = append(levels[nd.height], nd)
	}
	for _, lv := range levels {
		if len(lv) == 0 {
			continue
		}
		reads := make([]chunkstore.PackRead, len(lv))
		for k, nd := range lv {
			reads[k] = nd.read
		}
		st, err := p.r.pr.Read(ctx, reads, func(k int, obj, raw []byte, err error) error {
			nd := lv[k]
			nd.raw, nd.err = raw, err
			if err != nil {
				return nil
			}
			if nd.height == 0 {
				// obj shares its request's buffer: a copy is kept, so the cache's bound holds.
				nd.obj = bytes.Clone(obj)
			}
			p.r.hot.Add(nd.id, hotChunk{nd.obj, raw}, int64(len(nd.obj)+len(raw))+64)
			return nil
		})
		if s := p.stats; s != nil {
			s.Objects += int64(len(reads))
			s.Bytes += st.BytesRead
			s.Requests += int64(st.Requests)
			if lv[0].height > 0 {
				s.Decoded += int64(len(reads))
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// baseNAR is a base manifest with its entries indexed by chunk ID.
type baseNAR struct {
	m  *manifest.Manifest
	at map[chunk.ID]int
}

// manifest returns the parsed manifest of the NAR with this hash, from the cache of
// recent ones or, read true, from the store.
func (r *Resolver) manifest(ctx context.Context, narHash [32]byte) (b *baseNAR, read bool, err error) {
	if b, ok := r.mans.Get(narHash); ok {
		return b, false, nil
	}
	m, _, err := r.st.Manifest(ctx, narHash)
	if err != nil {
		return nil, false, fmt.Errorf("base manifest %s: %w", manifest.Key(narHash), err)
	}
	if m.NarHash != narHash {
		return nil, false, fmt.Errorf("base manifest %s describes NAR %s", manifest.Key(narHash), manifest.Key(m.NarHash))
	}
	if !m.Packed() {
		return nil, false, fmt.Errorf("base manifest %s (version %d) does not say where its objects lie", manifest.Key(narHash), m.Version())
	}
	b = &baseNAR{m: m, at: make(map[chunk.ID]int, len(m.Entries))}
	for j := len(m.Entries) - 1; j >= 0; j-- {
		b.at[m.Entries[j].ID] = j
	}
	r.mans.Add(narHash, b, 1)
	return b, true, nil
}
