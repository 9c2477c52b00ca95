// Package fetch makes NARs available to the daemon as verified chunks in its local
// cache. For one NAR it reads top to bottom:
//
//  1. Fetcher.Start takes a Request (the NAR's trusted narinfo) and runs one job per
//     NAR, however many Nix requests wait for it.
//  2. The job asks the sources for a manifest, the local cache's first, then the chunk
//     store's, then peers' (manifests, in manifests.go).
//  3. For a manifest, the planner prices the missing chunks over the sources (local
//     cache, /nix/store, peers, chunk store) against the whole NAR from the upstream,
//     and chooses (plan.go).
//  4. The job fetches the chunks, full or as deltas (delta.go), checks each against its
//     ID, keeps them, and checks the whole NAR against its NarHash and NarSize; or it
//     streams the whole NAR from the upstream, cutting it into chunks (whole.go). A
//     manifest that does not assemble costs a try with the next one, then the whole NAR.
//  5. The daemon streams the verified chunks to Nix (Reader).
//
// Every source is untrusted and behind one interface (source.go); the narinfo is the
// only thing trusted, and the daemon checked its signature before the Request.
package fetch

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// ErrSourcesExhausted means no source could supply a correct NAR.
var ErrSourcesExhausted = errors.New("no source could supply the NAR")

// Counters receives byte counts by source, named events and each NAR's pricing, for
// metrics and for tests that prove what went over the wire.
type Counters interface {
	Add(source string, bytes int64)
	Event(name string)
	Priced(Pricing)
}

// Pricing is what the planner chose for one NAR that has a manifest: the whole NAR
// from the upstream, or the chunks it lacks. Against WholeBytes, what Nix would have
// downloaded without shoal, it tells what shoal saved.
type Pricing struct {
	// WholeBytes is the upstream's NAR file size (FileSize); 0 when unknown.
	WholeBytes int64
	// Whole is set when the whole NAR was chosen.
	Whole bool
	// DownloadBytes is what the missing chunks cost, as deltas where cheaper.
	DownloadBytes int64
	// DeltaSavedBytes is what deltas saved against those chunks' full objects.
	DeltaSavedBytes int64
}

// Request is one NAR to make available.
type Request struct {
	// Info is the NAR's narinfo, already checked against the trusted keys.
	Info *nixcache.NarInfo
	// From names the cache Info came from: an upstream's URL serves the whole NAR at
	// Info.URL; any other source's narinfo sends the planner to ask the upstreams.
	From string
	// KnownPackage says that a version of the NAR's package is local (in the cache, or
	// an indexed /nix/store path). Without one no chunk can be local: when the cache
	// has no manifest either, the whole NAR is the cheapest source and the chunk
	// store's manifest would only add to the bill, so it is not asked.
	KnownPackage bool
}

// Fetcher makes NARs available as verified chunks in the local cache, choosing per NAR
// between its sources and the whole NAR by what the missing bytes cost.
type Fetcher struct {
	Cache *localcache.Cache
	Codec *chunk.Codec
	// Sources come after the local cache, in the order chunks are asked for: local
	// ones, then peers, then the chunk store.
	Sources []Source
	// Upstream serves whole NARs.
	Upstream Upstream
	Params   chunk.Params
	Counters Counters
	Log      *slog.Logger
	// Window bounds the chunks fetched ahead of the oldest unfinished one, and so the
	// memory a NAR in flight holds: Window x the largest chunk.
	Window int
	// MaxFetches bounds remote chunk requests in flight across all NARs, so sixteen
	// Nix jobs don't open sixteen windows' worth of connections to the store.
	MaxFetches int
	// Deltas decodes delta objects; nil makes one on first use.
	Deltas *chunk.DeltaCodec
	// MaxDeltaDecodes bounds the deltas being decoded at once across all NARs (default
	// 4). Each holds a dictionary and a chunk of up to 4 MiB, so this keeps the memory
	// a NAR in flight may take close to the window's.
	MaxDeltaDecodes int

	initOnce sync.Once
	cache    cacheSource
	fetches  singleflight.Group
	fetchSem chan struct{}
	deltaSem chan struct{}
	bases    baseCache
	mu       sync.Mutex
	jobs     map[string]*Progress
	// The jobs' context, ended by Close, which then waits for them: a job outlives the
	// responses that started it (a streamed response whose client went away) and must
	// not outlive what it reads and writes.
	jobCtx    context.Context
	cancelJob context.CancelFunc
	running   sync.WaitGroup
}

func (f *Fetcher) init() {
	f.initOnce.Do(func() {
		f.fetchSem = make(chan struct{}, cmp.Or(max(f.MaxFetches, 0), 64))
		f.deltaSem = make(chan struct{}, cmp.Or(max(f.MaxDeltaDecodes, 0), 4))
		if f.Deltas == nil {
			f.Deltas = chunk.NewDeltaCodec(0, cap(f.deltaSem))
		}
		f.cache = cacheSource{c: f.Cache, log: f.log()}
		f.jobs = make(map[string]*Progress)
		f.jobCtx, f.cancelJob = context.WithCancel(context.Background())
	})
}

// Close stops the jobs still running, waits for them, and releases the delta codec.
// Nothing may be started after it.
func (f *Fetcher) Close() {
	f.init()
	f.cancelJob()
	f.running.Wait()
	if f.Deltas != nil {
		f.Deltas.Close()
	}
}

// sources returns every source in chunk order: the local cache first.
func (f *Fetcher) sources() []Source {
	return append([]Source{f.cache}, f.Sources...)
}

func (f *Fetcher) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

func (f *Fetcher) count(source string, n int64) {
	if f.Counters != nil {
		f.Counters.Add(source, n)
	}
}

func (f *Fetcher) event(name string) {
	if f.Counters != nil {
		f.Counters.Event(name)
	}
}

// Start begins making the NAR available, or joins the job already doing it. The job runs
// on its own context: a client that goes away doesn't waste the work done for the next.
// The caller must Release the Progress when it is done with the NAR's chunks: until
// every caller has, they stay in the local cache whatever its budget says.
func (f *Fetcher) Start(req Request) (*Progress, error) {
	f.init()
	key := manifest.Key(req.Info.NarHash)
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.jobs[key]; ok {
		p.hold()
		return p, nil
	}
	lease, err := f.Cache.Lease()
	if err != nil {
		return nil, err
	}
	p := newProgress(key, lease)
	p.hold()
	f.jobs[key] = p
	f.running.Add(1)
	go func() {
		defer f.running.Done()
		m, err := f.run(f.jobCtx, req, p)
		f.mu.Lock()
		delete(f.jobs, key)
		f.mu.Unlock()
		p.finish(m, err)
	}()
	return p, nil
}

// run finds a manifest that assembles into the NAR, or falls back to the whole NAR.
func (f *Fetcher) run(ctx context.Context, req Request, p *Progress) (*manifest.Manifest, error) {
	info := req.Info
	log := f.log().With("nar", p.Key, "path", info.StorePath)
	whole := &wholeNAR{up: f.Upstream, req: req}
	var failed error
	for c := range f.manifests(ctx, req, whole, log) {
		m, err := f.attempt(ctx, c, req, whole, p, log)
		if err == nil {
			if m == nil {
				break // the plan chose the whole NAR
			}
			return m, nil
		}
		failed = err
	}
	w, wni := whole.get(ctx)
	if w == nil {
		if failed != nil {
			log.Warn("assembling from chunks failed and no upstream serves the whole NAR", "err", failed)
			return nil, fmt.Errorf("%w: %w", ErrSourcesExhausted, failed)
		}
		return nil, fmt.Errorf("%w: no manifest and no upstream for %s", ErrSourcesExhausted, info.StorePath)
	}
	if failed != nil {
		log.Warn("assembling from chunks failed; trying the whole NAR", "err", failed)
	}
	m, err := f.fromWhole(ctx, w, wni, p, p.Generation())
	if err != nil {
		return nil, fmt.Errorf("%w: whole NAR from %s: %w", ErrSourcesExhausted, w, err)
	}
	log.Info("NAR fetched whole", "from", w.String(), "bytes", wni.FileSize)
	return m, nil
}

// attempt plans c's manifest and, unless the plan takes the whole NAR (nil, nil),
// assembles the NAR from it. Peers are opened for this attempt alone: their dispatch
// ends with it.
func (f *Fetcher) attempt(ctx context.Context, c candidate, req Request, whole *wholeNAR, p *Progress, log *slog.Logger) (*manifest.Manifest, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	info := req.Info
	if err := checkManifest(c.m, req); err != nil {
		log.Warn("ignoring manifest", "from", c.src.Name(), "err", err)
		c.src.RejectManifest(info.NarHash, err)
		return nil, err
	}
	began := time.Now()
	pl, err := f.plan(ctx, c, req, whole, p.lease)
	if err != nil {
		return nil, err
	}
	planned := time.Now()
	pl.log(log)
	if f.Counters != nil {
		f.Counters.Priced(pl.pricing())
	}
	if pl.whole {
		return nil, nil
	}
	kept, err := f.fromChunks(ctx, req, pl, p, p.Generation())
	if err == nil {
		// Where an upgrade's seconds go: pricing (the sources' answers) and then
		// fetching, checking and keeping the chunks, and hashing the NAR.
		log.Debug("NAR assembled from chunks", "plan", planned.Sub(began).Round(time.Millisecond),
			"assemble", time.Since(planned).Round(time.Millisecond))
		return pl.m, nil
	}
	log.Warn("assembling from chunks failed", "manifest_from", c.src.Name(), "err", err)
	c.src.RejectManifest(info.NarHash, err)
	// The chunks passed their ID checks, but nothing says they belong to the NAR: a
	// peer's made-up manifest names made-up chunks. Keep none of them. The chunk
	// store's manifests are the fleet's own; their chunks stay, as other NARs being
	// served may be reading them.
	if c.src.Kind() == Peer {
		f.forget(kept)
	}
	p.restart()
	return nil, err
}

// forget drops chunks a failed attempt put into the local cache.
func (f *Fetcher) forget(ids []chunk.ID) {
	for _, id := range ids {
		if err := f.Cache.DeleteChunk(id); err != nil && !errors.Is(err, shoal.ErrNotFound) {
			f.log().Warn("dropping a failed attempt's chunk", "chunk", id.String(), "err", err)
		}
	}
}

// slot carries one chunk from a fetch worker to the in-order verifier.
type slot struct {
	raw   []byte
	fresh []byte // stored object to add to the local cache; nil when it was there
	err   error
	ready chan struct{}
}

// fromChunks fetches missing chunks concurrently, checks each against its ID, keeps
// them, and hashes the NAR in order; entries are published once they are in the local
// cache. The manifest is marked verified only when the whole NAR matched. It returns
// the chunks it added to the cache.
func (f *Fetcher) fromChunks(ctx context.Context, req Request, pl *plan, p *Progress, gen int) (kept []chunk.ID, err error) {
	m := pl.m
	digest := sha256.Sum256(pl.raw)
	verified, err := f.Cache.IsVerified(p.Key, digest)
	if err != nil {
		return nil, err
	}
	window := cmp.Or(max(f.Window, 0), 32)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	slots := make([]*slot, len(m.Entries))
	for i := range slots {
		slots[i] = &slot{ready: make(chan struct{})}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, read := range pl.prefetches() {
		g.Go(func() error {
			f.packsRead(read(gctx))
			return nil
		})
	}
	sem := make(chan struct{}, window)
	g.Go(func() error {
		for i := range m.Entries {
			select {
			case sem <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			g.Go(func() error {
				s := slots[i]
				s.raw, s.fresh, s.err = f.obtain(gctx, pl, i, !verified)
				close(s.ready)
				return nil
			})
		}
		return nil
	})

	h := sha256.New()
	var size uint64
	var batch []localcache.ChunkPut
	var pending []manifest.Entry
	flush := func() error {
		if len(batch) > 0 {
			if err := f.Cache.PutChunks(ctx, batch); err != nil {
				return fmt.Errorf("keeping chunks: %w", err)
			}
			for _, b := range batch {
				kept = append(kept, b.ID)
			}
			batch = batch[:0]
		}
		p.publish(gen, pending...)
		pending = pending[:0]
		return nil
	}
	err = func() error {
		var batchBytes int
		for i, e := range m.Entries {
			s := slots[i]
			select {
			case <-s.ready:
			case <-ctx.Done():
				return ctx.Err()
			}
			<-sem
			if s.err != nil {
				return fmt.Errorf("chunk %d (%s): %w", i, e.ID, s.err)
			}
			if !verified {
				h.Write(s.raw)
				size += uint64(len(s.raw))
			}
			p.handOff(gen, i, s.raw)
			if s.fresh != nil {
				batch = append(batch, localcache.ChunkPut{ID: e.ID, Obj: s.fresh})
				batchBytes += len(s.fresh)
			}
			slots[i] = nil // release the chunk's memory
			pending = append(pending, e)
			if len(batch) >= 64 || batchBytes >= 16<<20 || len(pending) >= 256 {
				if err := flush(); err != nil {
					return err
				}
				batchBytes = 0
			}
		}
		return flush()
	}()
	cancel()
	_ = g.Wait()
	if err != nil {
		return kept, err
	}
	if !verified {
		var sum [32]byte
		h.Sum(sum[:0])
		if sum != req.Info.NarHash || size != req.Info.NarSize {
			return kept, fmt.Errorf("assembled %d bytes hashing %s: %w", size, manifest.Key(sum), nixcache.ErrNarMismatch)
		}
		if err := f.Cache.MarkVerified(p.Key, digest); err != nil {
			return kept, err
		}
	}
	if err := f.Cache.PutManifest(p.Key, pl.raw); err != nil {
		return kept, fmt.Errorf("keeping manifest: %w", err)
	}
	return kept, nil
}

// packsRead counts what reading a NAR's objects out of packs cost beyond the objects
// themselves: the gaps read through to save requests.
func (f *Fetcher) packsRead(st chunkstore.ReadStats) {
	if st.Requests == 0 {
		return
	}
	f.count("store"+OverreadSuffix, st.BytesRead-st.BytesWanted)
	f.log().Debug("read objects out of packs", "requests", st.Requests, "bytes_read", st.BytesRead, "bytes_wanted", st.BytesWanted)
}

// obtain returns entry i's raw bytes (when needRaw) and, if it came from anywhere but
// the local cache, the checked object to keep. Local sources are asked first, each
// only for what it said it holds; then the others, once per chunk across all NARs.
func (f *Fetcher) obtain(ctx context.Context, pl *plan, i int, needRaw bool) (raw, fresh []byte, err error) {
	e := pl.m.Entries[i]
	for j, o := range pl.offers {
		if o.src.Kind() != Local {
			return f.obtainRemote(ctx, pl, i, pl.offers[j:])
		}
		if !o.holds[i] {
			continue
		}
		obj, err := o.Chunk(ctx, e)
		if err != nil {
			if !errors.Is(err, shoal.ErrNotFound) {
				f.log().Warn("reading a local chunk", "source", o.src.Name(), "chunk", e.ID.String(), "err", err)
			}
			continue
		}
		if o.cache && !needRaw {
			return nil, nil, nil
		}
		raw, err := f.open(obj, e.ID, int(e.Size))
		if err != nil {
			f.log().Warn("local chunk corrupt; dropping it", "source", o.src.Name(), "chunk", e.ID.String(), "err", err)
			o.Reject(e.ID, err)
			continue
		}
		if o.cache {
			return raw, nil, nil
		}
		fresh := f.frame(obj, raw)
		f.count(o.src.Name(), int64(len(fresh)))
		return raw, fresh, nil
	}
	return nil, nil, fmt.Errorf("chunk %s: no source holds it: %w", e.ID, shoal.ErrNotFound)
}

// obtainRemote fetches entry i from the remote offers, concurrent NARs sharing a
// chunk fetching it once.
func (f *Fetcher) obtainRemote(ctx context.Context, pl *plan, i int, offers []*offered) (raw, fresh []byte, err error) {
	e := pl.m.Entries[i]
	var dr *deltaReq
	if pl.price.useDelta[i] {
		dr = newDeltaReq(pl.m, i)
	}
	v, err, _ := f.fetches.Do(e.ID.String(), func() (any, error) {
		select {
		case f.fetchSem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-f.fetchSem }()
		return f.fetchRemote(ctx, i, e, dr, offers, pl.localOffers())
	})
	if err != nil {
		return nil, nil, err
	}
	fr := v.(fetched)
	return fr.raw, fr.obj, nil
}

// open checks obj against id and size and returns its raw bytes.
func (f *Fetcher) open(obj Object, id chunk.ID, size int) ([]byte, error) {
	if obj.Frame != nil {
		raw, err := f.Codec.Open(nil, id, obj.Frame, size)
		if err == nil && len(raw) != size {
			err = fmt.Errorf("chunk is %d bytes, manifest says %d", len(raw), size)
		}
		return raw, err
	}
	if sum := chunk.Sum(obj.Raw); sum != id {
		return nil, fmt.Errorf("bytes hash to %s: %w", sum, chunk.ErrCorrupt)
	}
	if len(obj.Raw) != size {
		return nil, fmt.Errorf("chunk is %d bytes, manifest says %d", len(obj.Raw), size)
	}
	return obj.Raw, nil
}

// frame returns the stored object to keep for a checked chunk.
func (f *Fetcher) frame(obj Object, raw []byte) []byte {
	if obj.Frame != nil {
		return obj.Frame
	}
	return f.Codec.Encode(nil, raw)
}

type fetched struct{ raw, obj []byte }

// fetchRemote asks each offer in turn for e: for its delta first when dr is set, then
// for the full chunk. A delta that fails in any way is only a failed attempt; a peer
// that sends a wrong delta may just hold other bases.
func (f *Fetcher) fetchRemote(ctx context.Context, i int, e manifest.Entry, dr *deltaReq, offers, locals []*offered) (fetched, error) {
	var errs []error
	for _, o := range offers {
		if !o.holds[i] {
			continue
		}
		name := o.src.Name()
		if dr != nil {
			fr, err := f.fetchDelta(ctx, e, dr, o, locals)
			if err == nil {
				return fr, nil
			}
			if ctx.Err() != nil {
				return fetched{}, ctx.Err()
			}
			f.deltaFailed(e.ID, err)
			errs = append(errs, err)
		}
		const attempts = 2
		for try := 0; try < attempts; try++ {
			obj, err := o.Chunk(ctx, e)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				if errors.Is(err, shoal.ErrNotFound) || ctx.Err() != nil {
					break
				}
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
					return fetched{}, ctx.Err()
				}
				continue
			}
			f.count(name, int64(obj.size()))
			raw, err := f.open(obj, e.ID, int(e.Size))
			if err != nil {
				f.log().Warn("chunk from source failed its check", "source", name, "chunk", e.ID.String(), "err", err)
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				// The source stops trusting whoever sent it; asking once more goes
				// elsewhere, or finds nothing.
				o.Reject(e.ID, err)
				continue
			}
			return fetched{raw: raw, obj: f.frame(obj, raw)}, nil
		}
	}
	if len(errs) == 0 {
		return fetched{}, fmt.Errorf("chunk %s: no remote source holds it: %w", e.ID, shoal.ErrNotFound)
	}
	return fetched{}, errors.Join(errs...)
}

// LocalChunk reads a chunk from the local cache and checks it against its ID; a chunk
// that fails is dropped so the next request fetches it again.
func (f *Fetcher) LocalChunk(ctx context.Context, dst []byte, e manifest.Entry) ([]byte, error) {
	var raw []byte
	var openErr error
	err := f.Cache.ReadChunk(ctx, e.ID, func(obj []byte) error {
		raw, openErr = f.Codec.Open(dst[:0], e.ID, obj, int(e.Size))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading local chunk %s: %w", e.ID, err)
	}
	if openErr != nil {
		_ = f.Cache.DeleteChunk(e.ID)
		return nil, fmt.Errorf("local chunk %s: %w", e.ID, openErr)
	}
	if len(raw) != int(e.Size) {
		return nil, fmt.Errorf("local chunk %s is %d bytes, manifest says %d: %w", e.ID, len(raw), e.Size, chunk.ErrCorrupt)
	}
	return raw, nil
}
