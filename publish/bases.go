package publish

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/nixname"
	"golang.org/x/sync/errgroup"
)

// job is one NAR of a run. done closes when the NAR is published or has failed; a
// later NAR of the run that uses it as its base waits for that.
type job struct {
	ni   *nixcache.NarInfo
	base *baseRef
	done chan struct{}
	ok   bool // set before done closes: its manifest and chunks are in the store
	// m is set before done closes in a packed store, where the manifest is written
	// later, once its last pack is: a NAR based on this one reads it from here.
	m *manifest.Manifest
	// chain is set with m in a delta-primary store: how each chunk of the NAR is
	// stored, for a NAR based on this one.
	chain *chainNode
	// committed closes once the NAR's manifest is written, or will not be;
	// committedOK is set before. A NAR whose chain runs through this one writes its
	// manifest after: a manifest in the store always finds its chain there.
	committed   chan struct{}
	committedOK bool
}

// baseRef is the base a job's deltas are made against.
type baseRef struct {
	nar  delta.NAR
	from *job // the job of this run that publishes it, or nil when the store had it
}

// plan orders the NARs of a run so that every NAR comes after the NARs it may take
// as its base (by package name, then Nix's version order), and picks each one's
// base among the store's NARs and the run's earlier ones. Publishing 1.0, 1.1 and
// 1.2 in one run thus gives 1.1 the base 1.0 and 1.2 the base 1.1, and a NAR never
// waits for one that comes after it, so a run cannot deadlock. Without deltas the
// jobs keep the caller's order and have no base.
func (p *Publisher) plan(ctx context.Context, infos []*nixcache.NarInfo) ([]*job, error) {
	var jobs []*job
	for _, ni := range infos {
		if ni != nil {
			jobs = append(jobs, &job{ni: ni, done: make(chan struct{}), committed: make(chan struct{})})
		}
	}
	if !p.opts.Deltas || len(jobs) == 0 {
		return jobs, nil
	}
	type key struct{ pname, version, suffix string }
	keyOf := func(storePath string) key {
		pname, v := nixname.Split(nixname.FromStorePath(storePath))
		v, suffix := nixname.SplitOutput(v)
		return key{pname, v, suffix}
	}
	slices.SortStableFunc(jobs, func(a, b *job) int {
		ka, kb := keyOf(a.ni.StorePath), keyOf(b.ni.StorePath)
		return cmp.Or(cmp.Compare(ka.pname, kb.pname), cmp.Compare(ka.suffix, kb.suffix),
			nixname.CompareVersions(ka.version, kb.version), cmp.Compare(a.ni.StorePath, b.ni.StorePath))
	})
	names := map[string]bool{}
	for _, j := range jobs {
		names[keyOf(j.ni.StorePath).pname] = true
	}
	// A sharded worker must not list the whole store: it asks the package name index,
	// one listing per name. An unsharded run lists the narinfos once, which also finds
	// bases in stores published before the name index existed.
	var byName map[string][]delta.NAR
	var err error
	if p.opts.Shard.Sharded() {
		byName, err = p.nameIndex(ctx, names)
	} else {
		byName, err = p.storeIndex(ctx, names)
	}
	if err != nil {
		return nil, err
	}
	// Store paths by hash part: those the store holds, and the run's.
	inStore := map[string]bool{}
	for _, nars := range byName {
		for _, n := range nars {
			inStore[hashPartOf(n.StorePath)] = true
		}
	}
	fromRun := map[string]*job{}
	for _, j := range jobs {
		pname := keyOf(j.ni.StorePath).pname
		hp := j.ni.HashPart()
		cands := byName[pname]
		if inStore[hp] {
			// The name index does not know NarHashes, so PickBase cannot tell the
			// NAR itself from its candidates: leave it out here.
			cands = slices.DeleteFunc(slices.Clone(cands), func(n delta.NAR) bool { return hashPartOf(n.StorePath) == hp })
		}
		if b, ok := delta.PickBase(j.ni.StorePath, j.ni.NarHash, cands); ok {
			ref := &baseRef{nar: b}
			if bhp := hashPartOf(b.StorePath); !inStore[bhp] {
				ref.from = fromRun[bhp]
			}
			j.base = ref
		}
		if _, dup := fromRun[hp]; !dup {
			fromRun[hp] = j
			byName[pname] = append(byName[pname], delta.NAR{StorePath: j.ni.StorePath, NarHash: j.ni.NarHash, NarSize: j.ni.NarSize})
		}
	}
	return jobs, nil
}

// hashPartOf returns the hash part of a store path or base name.
func hashPartOf(storePath string) string {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	return base[:min(32, len(base))]
}

// storeIndex reads the narinfos already in the store, once per run, and returns
// those of the package names asked for. Their presence means their manifests and
// chunks are complete, so each is a usable base.
func (p *Publisher) storeIndex(ctx context.Context, names map[string]bool) (map[string][]delta.NAR, error) {
	var hps []string
	if err := p.dst.NarInfos(ctx, func(hp string) error {
		hps = append(hps, hp)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("indexing the store's NARs for delta bases: %w", err)
	}
	var mu sync.Mutex
	byName := map[string][]delta.NAR{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, hp := range hps {
		g.Go(func() error {
			raw, err := p.dst.NarInfo(gctx, hp)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil // collected since the listing
			}
			if err != nil {
				return fmt.Errorf("indexing the store's NARs for delta bases: %w", err)
			}
			ni, err := nixcache.ParseNarInfo(raw)
			if err != nil {
				p.log.Warn("not a delta base: unreadable narinfo in the store", "path", hp, "err", err)
				return nil
			}
			pname, _ := nixname.Split(nixname.FromStorePath(ni.StorePath))
			if !names[pname] {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			byName[pname] = append(byName[pname], delta.NAR{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	p.log.Debug("indexed the store for delta bases", "narinfos", len(hps), "names", len(byName))
	return byName, nil
}

// deltaBase is a base NAR ready for making deltas: its manifest, where its chunks
// lie and their IDs.
type deltaBase struct {
	nar    delta.NAR
	m      *manifest.Manifest
	layout delta.Layout
	ids    []chunk.ID
	// node, in a delta-primary store, says how the base stores each chunk and how
	// deep its chain is; nil when that is unknown (every chunk then counts as too
	// deep to build on).
	node *chainNode
}

// loadBase waits for a base published earlier in this run and reads its manifest.
// A base that failed or whose manifest cannot be read costs only the deltas: the NAR
// is published with a version 1 manifest, and the reason is logged.
func (p *Publisher) loadBase(ctx context.Context, j *job) (*deltaBase, error) {
	ref := j.base
	if ref.from != nil {
		select {
		case <-ref.from.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if !ref.from.ok {
			p.log.Warn("no deltas: the base was not published", "path", j.ni.StorePath, "base", ref.nar.StorePath)
			return nil, nil
		}
	}
	if ref.from == nil {
		ok, err := p.resolveBase(ctx, ref)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			p.log.Warn("no deltas: the base's narinfo is unreadable", "path", j.ni.StorePath, "base", ref.nar.StorePath, "err", err)
			return nil, nil
		}
		if !ok {
			p.log.Warn("no deltas: the base named in the name index is not in the store", "path", j.ni.StorePath, "base", ref.nar.StorePath)
			return nil, nil
		}
	}
	var m *manifest.Manifest
	var err error
	if ref.from != nil && ref.from.m != nil {
		m = ref.from.m
	} else {
		m, _, err = p.dst.Manifest(ctx, ref.nar.NarHash)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		p.log.Warn("no deltas: the base's manifest is unreadable", "path", j.ni.StorePath, "base", ref.nar.StorePath, "err", err)
		return nil, nil
	}
	if m.Chunker != p.opts.Params.Identity() {
		p.log.Warn("no deltas: the base was cut with another chunker", "path", j.ni.StorePath, "base", ref.nar.StorePath, "chunker", m.Chunker)
		return nil, nil
	}
	b := &deltaBase{nar: ref.nar, m: m, ids: make([]chunk.ID, len(m.Entries))}
	if p.chains != nil {
		if ref.from != nil {
			b.node = ref.from.chain
		} else {
			b.node = p.chains.load(ctx, ref.nar.NarHash, j.ni.NarHash, m)
		}
	}
	b.layout = delta.Layout{NarSize: m.NarSize, Offsets: m.Offsets(), Sizes: make([]uint32, len(m.Entries))}
	for i, e := range m.Entries {
		b.layout.Sizes[i] = e.Size
		b.ids[i] = e.ID
	}
	return b, nil
}

// baseCache keeps recently used base chunks, decoded. Neighbouring new chunks share
// most of their base chunks, and consecutive NARs of a run share a base's chunks, so
// each base chunk is read from the store and decoded about once. Concurrent asks for
// the same chunk share one read.
type baseCache struct {
	// fetch reads a chunk object: by key in a loose store, from the packer in a
	// packed one.
	fetch func(ctx context.Context, id chunk.ID) ([]byte, error)
	codec *chunk.Codec
	limit int

	mu      sync.Mutex
	entries map[chunk.ID]*baseEntry
	lru     list.List // of *baseEntry, most recently used first; loaded entries only
	size    int
}

type baseEntry struct {
	id    chunk.ID
	ready chan struct{}
	raw   []byte
	err   error
	elem  *list.Element
}

func newBaseCache(st *chunkstore.Store, codec *chunk.Codec, limit int) *baseCache {
	return &baseCache{fetch: st.Chunk, codec: codec, limit: limit, entries: map[chunk.ID]*baseEntry{}}
}

// get returns the raw bytes of base chunk id (size bytes). The slice is shared:
// callers must not modify it.
func (c *baseCache) get(ctx context.Context, id chunk.ID, size uint32) ([]byte, error) {
	return c.getWith(ctx, id, func(ctx context.Context) ([]byte, error) {
		obj, err := c.fetch(ctx, id)
		if err != nil {
			return nil, err
		}
		return c.codec.Open(nil, id, obj, int(size))
	})
}

// peek returns a chunk the cache holds, without waiting for one being loaded: a
// chunk rebuilt through a chain loads others from within a load, and waiting there
// could wait on itself.
func (c *baseCache) peek(id chunk.ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || e.elem == nil {
		return nil, false
	}
	c.lru.MoveToFront(e.elem)
	return e.raw, true
}

// put adds a chunk loaded without get.
func (c *baseCache) put(id chunk.ID, raw []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[id]; ok {
		return
	}
	e := &baseEntry{id: id, ready: make(chan struct{}), raw: raw}
	close(e.ready)
	c.entries[id] = e
	c.insertLocked(e)
}

func (c *baseCache) insertLocked(e *baseEntry) {
	e.elem = c.lru.PushFront(e)
	c.size += len(e.raw)
	for c.size > c.limit && c.lru.Len() > 1 {
		old := c.lru.Remove(c.lru.Back()).(*baseEntry)
		delete(c.entries, old.id)
		c.size -= len(old.raw)
	}
}

// getWith is get with the chunk's bytes from load.
func (c *baseCache) getWith(ctx context.Context, id chunk.ID, load func(context.Context) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.entries[id]; ok {
		if e.elem != nil {
			c.lru.MoveToFront(e.elem)
		}
		c.mu.Unlock()
		select {
		case <-e.ready:
			return e.raw, e.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	e := &baseEntry{id: id, ready: make(chan struct{})}
	c.entries[id] = e
	c.mu.Unlock()

	raw, err := load(ctx)
	e.raw, e.err = raw, err
	c.mu.Lock()
	if err != nil {
		delete(c.entries, id) // the next ask tries again
	} else {
		c.insertLocked(e)
	}
	c.mu.Unlock()
	close(e.ready)
	return e.raw, err
}
