package fetch

import (
	"context"
	"fmt"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/chain"
	"github.com/shoal-nix/shoal/manifest"
)

// StoreSource offers a chunk store's manifests, chunks and the deltas its manifests
// name. A manifest of a packed store (layout 3) says where each object lies, and the
// chunks a NAR needs from the store are then read with a few ranged requests ahead of
// the fetch workers (prefetch); any other manifest's objects are read one by one by
// name. Use it by pointer; Close releases the pack reader's decoders.
type StoreSource struct {
	Store *chunkstore.Store
	// Reads tunes the reading of packs; zero fields take DefaultPackReads'.
	Reads chunkstore.ReadOptions

	once    sync.Once
	packs   *chunkstore.PackReader
	chains  *chain.Resolver
	packErr error
}

// DefaultPackReads are the daemon's pack read settings. The window is half
// chunkstore's default because a daemon fetches several NARs at once, each holding up to
// its window and 16 MiB of read-ahead (48 MiB for a large cold NAR): 32 MiB still
// coalesces a NAR of 64 KiB chunks into requests of megabytes. On five Go toolchains
// (internal/cmd/layout-bench) a 16 MiB window took 52 requests for the newest release's
// 2,421 chunks, 32 MiB 48.
var DefaultPackReads = chunkstore.ReadOptions{Window: 32 << 20, MaxRange: 16 << 20, Parallel: 4}

var _ Source = (*StoreSource)(nil)

func (s *StoreSource) Name() string { return "store" }
func (s *StoreSource) Kind() Kind   { return Remote }

func (s *StoreSource) Manifest(ctx context.Context, narHash [32]byte) ([]byte, error) {
	_, raw, err := s.Store.Manifest(ctx, narHash)
	return raw, err
}

// RejectManifest does nothing: the store is the fleet's own, and the NAR then comes
// whole from the upstream, with the failure in the log.
func (s *StoreSource) RejectManifest([32]byte, error) {}

func (s *StoreSource) Open(_ context.Context, m *manifest.Manifest) (Offer, error) {
	if !m.Packed() {
		return namedOffer{s.Store}, nil
	}
	pr, err := s.reader()
	if err != nil {
		return nil, err
	}
	o := newPackOffer(s.Store, pr, m)
	o.chains = s.chains
	return o, nil
}

func (s *StoreSource) reader() (*chunkstore.PackReader, error) {
	s.once.Do(func() {
		opts := s.Reads
		if opts == (chunkstore.ReadOptions{}) {
			opts = DefaultPackReads
		}
		if s.packs, s.packErr = chunkstore.NewPackReader(s.Store, opts); s.packErr != nil {
			return
		}
		// A daemon rebuilds chains for one NAR at a time, and only when that is
		// cheaper than the whole NAR: a small cache of hot bases is enough.
		s.chains = chain.New(s.Store, s.packs, chain.Options{CacheBytes: 32 << 20})
	})
	return s.packs, s.packErr
}

// Close releases the pack reader, if one was made.
func (s *StoreSource) Close() {
	s.once.Do(func() {}) // no reader is made after Close
	if s.packs != nil {
		s.packs.Close()
	}
}

// namedOffer reads a store's objects by name: one request per chunk or delta.
type namedOffer struct{ st *chunkstore.Store }

// Holds answers yes for every chunk: the store is the source of last resort for
// chunks, and what it lacks costs a retry with the whole NAR.
func (o namedOffer) Holds(ids []chunk.ID) ([]bool, error) { return allHeld(len(ids)), nil }

func (o namedOffer) Chunk(ctx context.Context, e manifest.Entry) (Object, error) {
	obj, err := o.st.Chunk(ctx, e.ID)
	return Object{Frame: obj}, err
}

// Delta fetches the delta object the store keeps under the name chunk.DeltaID gives
// (target, bases), the pair a manifest entry records.
func (o namedOffer) Delta(ctx context.Context, id chunk.ID, bases []chunk.ID) ([]byte, error) {
	return o.st.Delta(ctx, chunk.DeltaID(id, bases))
}

// Reject does nothing: a store object that fails its check is reported in the log,
// and the chunk comes from the next source or the NAR whole.
func (o namedOffer) Reject(chunk.ID, error) {}

func allHeld(n int) []bool {
	held := make([]bool, n)
	for i := range held {
		held[i] = true
	}
	return held
}

// prefetcher is an offer that supplies many chunks at once far cheaper than one at a
// time, as a packed store does by coalescing neighbours into one ranged request. Before
// the fetch workers start, the fetcher tells it which entries it will be asked for, and
// as what; read then reads them in order until ctx ends, and Chunk and Delta answer from
// what it read.
type prefetcher interface {
	prefetch(wants []want) (read func(ctx context.Context) chunkstore.ReadStats)
}

// want is one entry a prefetcher is to read: its full object, or its delta object.
// Either is handed over as stored; the fetcher decodes and checks it.
type want struct {
	entry int
	delta bool
}

// packOffer supplies a packed manifest's objects by their locations, and the chunks a
// delta-primary store keeps no object of by rebuilding them from their chains.
type packOffer struct {
	st      *chunkstore.Store
	pr      *chunkstore.PackReader
	chains  *chain.Resolver
	m       *manifest.Manifest
	entry   map[chunk.ID]int // first entry of each chunk
	rebuilt chained

	mu      sync.Mutex
	results map[objKey]*packResult
	// taken is the position, in the prefetch's reads, of the furthest result taken;
	// the prefetch stops reading more than lead bytes past it.
	taken int
	moved chan struct{} // closed and replaced when taken moves
	lead  int64
}

// objKey names one object of a NAR: the chunk's full object, or its delta.
type objKey struct {
	id    chunk.ID
	delta bool
}

// packResult is one object the prefetch read, or why it could not.
type packResult struct {
	pos  int // among the prefetch's reads
	refs int // entries still to take it
	done chan struct{}
	obj  []byte
	err  error
}

var _ prefetcher = (*packOffer)(nil)

func newPackOffer(st *chunkstore.Store, pr *chunkstore.PackReader, m *manifest.Manifest) *packOffer {
	o := &packOffer{st: st, pr: pr, m: m, entry: make(map[chunk.ID]int, len(m.Entries)),
		results: map[objKey]*packResult{}, taken: -1, moved: make(chan struct{}), lead: 16 << 20}
	for i := len(m.Entries) - 1; i >= 0; i-- {
		o.entry[m.Entries[i].ID] = i
	}
	return o
}

func (o *packOffer) Holds(ids []chunk.ID) ([]bool, error) { return allHeld(len(ids)), nil }

// Reject does nothing, as for namedOffer.
func (o *packOffer) Reject(chunk.ID, error) {}

func (o *packOffer) Chunk(ctx context.Context, e manifest.Entry) (Object, error) {
	i, ok := o.entry[e.ID]
	if !ok {
		return Object{}, fmt.Errorf("chunk %s is not in the manifest being fetched", e.ID)
	}
	if o.m.Form(i) != manifest.Full {
		raw, wire, err := o.rebuilt.get(ctx, o.chains, o.m, i)
		return Object{Raw: raw, rebuilt: true, wire: wire}, err
	}
	if obj, err, ok := o.take(ctx, objKey{id: e.ID}); ok {
		return Object{Frame: obj}, err
	}
	rd, err := chunkstore.ChunkRead(o.m, i)
	if err != nil {
		return Object{}, err
	}
	obj, err := o.st.ReadPackRange(ctx, rd.Pack, rd.Offset, rd.Length)
	return Object{Frame: obj}, err
}

func (o *packOffer) Delta(ctx context.Context, id chunk.ID, bases []chunk.ID) ([]byte, error) {
	i, ok := o.entry[id]
	if !ok {
		return nil, fmt.Errorf("chunk %s is not in the manifest being fetched", id)
	}
	if obj, err, ok := o.take(ctx, objKey{id: id, delta: true}); ok {
		return obj, err
	}
	rd, ok := chunkstore.DeltaRead(o.m, i, nil)
	if !ok {
		return nil, fmt.Errorf("delta for chunk %s: the manifest names none", id)
	}
	return o.st.ReadPackRange(ctx, rd.Pack, rd.Offset, rd.Length)
}

// take waits for the prefetch's result for k, if it was asked to read k.
func (o *packOffer) take(ctx context.Context, k objKey) (obj []byte, err error, ok bool) {
	o.mu.Lock()
	r, ok := o.results[k]
	o.mu.Unlock()
	if !ok {
		return nil, nil, false
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, ctx.Err(), true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if r.refs--; r.refs <= 0 {
		delete(o.results, k)
	}
	if r.pos > o.taken {
		o.taken = r.pos
		close(o.moved)
		o.moved = make(chan struct{})
	}
	return r.obj, r.err, true
}

// prefetch registers the wanted objects, each once however many entries name it, and
// returns the function that reads them in the order given, at most lead bytes ahead of
// the furthest one taken. Results it does not deliver (ctx ended) end with an error, so
// no taker waits for them.
func (o *packOffer) prefetch(wants []want) func(context.Context) chunkstore.ReadStats {
	var (
		reads   []chunkstore.PackRead
		results []*packResult
		ends    []int64 // bytes read up to and including each read
		total   int64
	)
	o.mu.Lock()
	var rebuild []int
	for _, w := range wants {
		if !w.delta && o.m.Form(w.entry) != manifest.Full {
			rebuild = append(rebuild, w.entry)
			continue
		}
		k := objKey{id: o.m.Entries[w.entry].ID, delta: w.delta}
		if r, ok := o.results[k]; ok {
			r.refs++
			continue
		}
		var rd chunkstore.PackRead
		if w.delta {
			var ok bool
			if rd, ok = chunkstore.DeltaRead(o.m, w.entry, nil); !ok {
				continue // the fetcher then asks for the full object, read alone
			}
		} else {
			var err error
			if rd, err = chunkstore.ChunkRead(o.m, w.entry); err != nil {
				continue
			}
		}
		r := &packResult{pos: len(reads), refs: 1, done: make(chan struct{})}
		o.results[k] = r
		reads = append(reads, rd)
		results = append(results, r)
		total += int64(rd.Length)
		ends = append(ends, total)
	}
	o.mu.Unlock()
	o.rebuilt.plan(o.m, rebuild)
	return func(ctx context.Context) chunkstore.ReadStats {
		delivered := 0
		// The fetcher opens every object it takes (fetchRemote, fetchDelta): the reader
		// need not.
		stats, err := o.pr.ReadStored(ctx, reads, func(i int, obj []byte, err error) error {
			if werr := o.waitRoom(ctx, i, ends); werr != nil {
				return werr
			}
			results[i].obj, results[i].err = obj, err
			close(results[i].done)
			delivered = i + 1
			return nil
		})
		if err == nil && delivered < len(reads) {
			err = fmt.Errorf("stopped after %d of %d objects", delivered, len(reads))
		}
		for _, r := range results[delivered:] {
			r.err = fmt.Errorf("reading packs: %w", err)
			close(r.done)
		}
		return stats
	}
}

// waitRoom blocks until read i lies within lead bytes of the furthest result taken.
func (o *packOffer) waitRoom(ctx context.Context, i int, ends []int64) error {
	for {
		o.mu.Lock()
		var from int64
		if o.taken >= 0 {
			from = ends[o.taken]
		}
		room := i <= o.taken+1 || ends[i]-from <= o.lead
		moved := o.moved
		o.mu.Unlock()
		if room {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// chainCost is what rebuilding entries from their chains would fetch.
func (o *packOffer) chainCost(ctx context.Context, entries []int) (uint64, error) {
	if o.chains == nil {
		return 0, fmt.Errorf("no chain resolver")
	}
	return o.chains.Cost(ctx, o.m, entries)
}

// chained hands out the chunks of a NAR that are rebuilt from their chains, a window
// at a time: the fetch workers ask for them one by one, in about NAR order, and a
// window of them costs the resolver a few coalesced reads per level of the chain where
// one at a time would cost as many per chunk. A window is rebuilt on the first ask for
// one of its entries, and each chunk is dropped once handed out, so what is held is
// about the windows the workers are in.
type chained struct {
	mu      sync.Mutex
	window  map[int]int // entry -> its window, for the entries planned
	windows [][]int
	flight  map[int]chan struct{} // window being rebuilt -> closed when done
	done    map[int]error         // windows rebuilt, and how that went
	raw     map[int][]byte        // rebuilt entries not yet handed out
	wire    map[int]int64         // a window's bytes read, on the entry that rebuilt it
}

// chainWindow is the NAR bytes one window of rebuilt chunks covers.
const chainWindow = 8 << 20

// plan cuts the entries the prefetch will ask to be rebuilt into windows.
func (c *chained) plan(m *manifest.Manifest, entries []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.window = map[int]int{}
	c.windows = nil
	size := 0
	for _, i := range entries {
		if len(c.windows) == 0 || size+int(m.Entries[i].Size) > chainWindow {
			c.windows = append(c.windows, nil)
			size = 0
		}
		w := len(c.windows) - 1
		c.windows[w] = append(c.windows[w], i)
		c.window[i] = w
		size += int(m.Entries[i].Size)
	}
	c.flight, c.done, c.raw, c.wire = map[int]chan struct{}{}, map[int]error{}, map[int][]byte{}, map[int]int64{}
}

// get returns entry i's bytes, rebuilding its window if nobody has yet, and the bytes
// read from the store for it: a window's all on the entry that rebuilt it, so that
// the fetcher's byte counts add up. An entry nobody planned is rebuilt alone.
func (c *chained) get(ctx context.Context, r *chain.Resolver, m *manifest.Manifest, i int) ([]byte, int64, error) {
	if r == nil {
		return nil, 0, fmt.Errorf("entry %d has no chunk object, and there is no chain resolver", i)
	}
	alone := func() ([]byte, int64, error) {
		var raw []byte
		st, err := r.Entries(ctx, m, []int{i}, func(_ int, _, b []byte) error {
			raw = b
			return nil
		})
		return raw, st.Bytes, err
	}
	for {
		c.mu.Lock()
		if raw, ok := c.raw[i]; ok {
			wire := c.wire[i]
			delete(c.raw, i)
			delete(c.wire, i)
			c.mu.Unlock()
			return raw, wire, nil
		}
		w, planned := c.window[i]
		if !planned {
			c.mu.Unlock()
			return alone()
		}
		if err, ok := c.done[w]; ok {
			c.mu.Unlock()
			if err == nil {
				// Handed out already (a chunk that appears twice): rebuild it again.
				return alone()
			}
			return nil, 0, err
		}
		if ch, ok := c.flight[w]; ok {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
		ch := make(chan struct{})
		c.flight[w] = ch
		entries := c.windows[w]
		c.mu.Unlock()
		got := map[int][]byte{}
		st, err := r.Entries(ctx, m, entries, func(j int, _, raw []byte) error {
			got[j] = raw
			return nil
		})
		c.mu.Lock()
		for j, raw := range got {
			c.raw[j] = raw
		}
		c.wire[i] += st.Bytes
		c.done[w] = err
		delete(c.flight, w)
		close(ch)
		c.mu.Unlock()
		if err != nil && len(got) == 0 {
			return nil, 0, err
		}
	}
}
