package substituter

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// ChunkSource is one place chunks come from: the central store today, peers later. All
// sources are untrusted; the assembler checks every object against its ID.
type ChunkSource interface {
	// Name is short, for logs and metrics.
	Name() string
	// Chunk returns the stored object (one zstd frame) of id; errors.Is(err,
	// ErrNotFound) when the source doesn't have it.
	Chunk(ctx context.Context, id chunk.ID) ([]byte, error)
}

// DeltaSource is a ChunkSource that can also send a chunk as a delta object (see
// chunk.DeltaCodec): the chunk compressed against the concatenation of bases, chunks
// the caller already holds. The store serves the deltas its manifests name; a peer
// that holds the chunk and the bases may compute one. Errors as for Chunk; the
// assembler checks the decoded delta against id and falls back to the full chunk.
type DeltaSource interface {
	Delta(ctx context.Context, id chunk.ID, bases []chunk.ID) ([]byte, error)
}

// NarSources is a ChunkSource that answers best when it knows which NAR the chunks are
// for, as LAN peers do: they serve only chunks of NARs they verified, and are asked once
// per NAR whether they have it. The assembler calls ForNar before fetching a NAR's
// chunks and uses the returned source in place of this one until ctx ends.
type NarSources interface {
	ChunkSource
	// ForNar returns the source to use for m's chunks, and whether it expects to supply
	// all of them, which makes chunks cheaper than the whole NAR whatever they weigh.
	ForNar(ctx context.Context, m *manifest.Manifest) (src ChunkSource, covers bool)
}

// BadObjectReporter is a ChunkSource that wants to hear when an object it returned
// failed its ID check, so it can stop trusting whoever supplied it. The assembler then
// asks the same source once more, which should answer from somewhere else.
type BadObjectReporter interface {
	BadObject(id chunk.ID, err error)
}

// Counters receives byte counts by source, for metrics and for tests that prove what
// went over the wire.
type Counters interface {
	Add(source string, bytes int64)
}

// NarJob describes one NAR to make available: its trusted narinfo, where the whole NAR
// can come from, and the manifest if one is known.
type NarJob struct {
	Info *NarInfo
	// Whole, when set, serves the whole NAR at Info.URL with Info's compression.
	Whole *BinaryCache
	// ResolveWhole, when Whole is nil, finds it (and the narinfo naming the NAR file
	// there) on demand: asking an upstream costs a round trip that a NAR whose chunks
	// are all local never needs.
	ResolveWhole func(context.Context) (*BinaryCache, *NarInfo)
	// Manifest and its encoding, when the store (or the local cache) has one. Untrusted:
	// it is used only if the assembled bytes match Info.
	Manifest    *manifest.Manifest
	ManifestRaw []byte
}

// Assembler makes NARs available as verified chunks in the local cache, choosing per NAR
// between chunk sources and the whole NAR by what the missing bytes cost.
type Assembler struct {
	Cache    *localcache.Cache
	Codec    *chunk.Codec
	Sources  []ChunkSource
	Params   chunk.Params
	Counters Counters
	Log      *slog.Logger
	// Window bounds the chunks fetched ahead of the oldest unfinished one, and so the
	// memory a NAR in flight holds: Window x the largest chunk.
	Window int
	// MaxFetches bounds remote chunk requests in flight across all NARs, so sixteen
	// Nix jobs don't open sixteen windows' worth of connections to the store.
	MaxFetches int
	// Deltas decodes delta objects (see DeltaSource); nil makes one on first use.
	Deltas *chunk.DeltaCodec
	// MaxDeltaDecodes bounds the deltas being decoded at once across all NARs (default
	// 4). Each holds a dictionary and a chunk of up to 4 MiB, so this keeps the memory
	// a NAR in flight may take close to the window's.
	MaxDeltaDecodes int

	fetches  singleflight.Group
	fetchSem chan struct{}
	deltaSem chan struct{}
	bases    baseCache
	mu       sync.Mutex
	jobs     map[string]*Progress
}

// ErrSourcesExhausted means no source could supply a correct NAR.
var ErrSourcesExhausted = errors.New("no source could supply the NAR")

// Progress is a NAR being made available. Entries become ready in NAR order; a reader
// may stream ready entries before the NAR is verified, holding back the end until Wait
// says the whole NAR matched.
type Progress struct {
	Key string

	mu       sync.Mutex
	cond     *sync.Cond
	gen      int
	entries  []manifest.Entry
	done     bool
	err      error
	manifest *manifest.Manifest
}

func newProgress(key string) *Progress {
	p := &Progress{Key: key}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// Ready blocks until entry i of generation gen is in the local cache, the job ends, or
// ctx ends. ok is false when entry i will never come in this generation (the job failed,
// or moved to another source whose chunks differ, or the NAR has fewer entries).
func (p *Progress) Ready(ctx context.Context, gen, i int) (e manifest.Entry, ok bool, err error) {
	defer p.wakeOnDone(ctx)()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.gen != gen {
			return e, false, fmt.Errorf("NAR %s: source changed while streaming", p.Key)
		}
		if i < len(p.entries) {
			return p.entries[i], true, nil
		}
		if p.done {
			return e, false, p.err
		}
		if err := ctx.Err(); err != nil {
			return e, false, err
		}
		p.cond.Wait()
	}
}

// wakeOnDone wakes the waiters when ctx ends, so a cond.Wait can notice; call the
// returned function to stop.
func (p *Progress) wakeOnDone(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
}

// Generation returns the current generation, to pass to Ready.
func (p *Progress) Generation() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// Wait blocks until the job ends or ctx ends, and returns the verified manifest.
func (p *Progress) Wait(ctx context.Context) (*manifest.Manifest, error) {
	defer p.wakeOnDone(ctx)()
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.done {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p.cond.Wait()
	}
	return p.manifest, p.err
}

// Done reports whether the job ended and how.
func (p *Progress) Done() (bool, *manifest.Manifest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done, p.manifest, p.err
}

func (p *Progress) publish(gen int, es ...manifest.Entry) {
	p.mu.Lock()
	if p.gen == gen {
		p.entries = append(p.entries, es...)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *Progress) restart() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.entries = nil
	p.cond.Broadcast()
	return p.gen
}

func (p *Progress) finish(m *manifest.Manifest, err error) {
	p.mu.Lock()
	p.done, p.manifest, p.err = true, m, err
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Start begins making the NAR available, or joins the job already doing it. The job runs
// on its own context: a client that goes away doesn't waste the work done for the next.
func (a *Assembler) Start(job NarJob) *Progress {
	key := manifest.Key(job.Info.NarHash)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.jobs == nil {
		a.jobs = make(map[string]*Progress)
	}
	if p, ok := a.jobs[key]; ok {
		return p
	}
	if a.fetchSem == nil {
		n := a.MaxFetches
		if n <= 0 {
			n = 64
		}
		a.fetchSem = make(chan struct{}, n)
	}
	if a.deltaSem == nil {
		a.deltaSem = make(chan struct{}, cmp.Or(max(a.MaxDeltaDecodes, 0), 4))
	}
	if a.Deltas == nil {
		a.Deltas = chunk.NewDeltaCodec(0, cap(a.deltaSem))
	}
	p := newProgress(key)
	a.jobs[key] = p
	go func() {
		m, err := a.run(context.Background(), job, p)
		p.finish(m, err)
		a.mu.Lock()
		delete(a.jobs, key)
		a.mu.Unlock()
	}()
	return p
}

func (a *Assembler) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}

func (a *Assembler) count(source string, n int64) {
	if a.Counters != nil {
		a.Counters.Add(source, n)
	}
}

func (a *Assembler) run(ctx context.Context, job NarJob, p *Progress) (*manifest.Manifest, error) {
	info := job.Info
	log := a.log().With("nar", p.Key, "path", info.StorePath)
	gen := p.Generation()
	if m := job.Manifest; m != nil {
		if err := checkManifest(m, info); err != nil {
			log.Warn("ignoring manifest", "err", err)
		} else {
			price, err := a.missing(m)
			if err != nil {
				return nil, err
			}
			missingBytes := price.Bytes
			var sources []ChunkSource
			covered := false
			if price.Missing > 0 {
				a.resolveWhole(ctx, &job)
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				sources, covered = a.narSources(ctx, m)
			}
			// Chunks that LAN peers hold cost the store and the upstream nothing.
			whole := !covered && job.Whole != nil && info.FileSize > 0 && missingBytes > info.FileSize
			log.Info("NAR source chosen",
				"chunks", len(m.Entries), "missing_chunks", price.Missing, "download_chunks", price.Download, "missing_bytes", missingBytes,
				"delta_chunks", price.Deltas, "delta_bytes", price.DeltaBytes, "delta_share", fmt.Sprintf("%.2f", price.DeltaShare()),
				"delta_saves_bytes", price.FullBytes-price.DeltaBytes,
				"whole_nar_bytes", info.FileSize, "peers_cover", covered, "source", map[bool]string{true: "whole NAR", false: "chunks"}[whole])
			notePricing(a.Counters, NarPricing{WholeBytes: int64(info.FileSize), Whole: whole, DownloadBytes: int64(missingBytes), DeltaSavedBytes: int64(price.FullBytes - price.DeltaBytes)})
			if !whole {
				err := a.fromChunks(ctx, job, m, p, gen, sources, price.useDelta)
				if err == nil {
					return m, nil
				}
				a.resolveWhole(ctx, &job)
				if job.Whole == nil {
					log.Warn("assembling from chunks failed and no upstream serves the whole NAR", "err", err)
					return nil, fmt.Errorf("%w: %v", ErrSourcesExhausted, err)
				}
				log.Warn("assembling from chunks failed; trying the whole NAR", "err", err)
				gen = p.restart()
			}
		}
	}
	a.resolveWhole(ctx, &job)
	if job.Whole == nil {
		return nil, fmt.Errorf("%w: no manifest and no upstream for %s", ErrSourcesExhausted, info.StorePath)
	}
	m, err := a.fromWhole(ctx, job, p, gen)
	if err != nil {
		return nil, fmt.Errorf("%w: whole NAR from %s: %v", ErrSourcesExhausted, job.Whole, err)
	}
	log.Info("NAR fetched whole", "from", job.Whole.String(), "bytes", info.FileSize)
	return m, nil
}

// resolveWhole fills in job.Whole (and the narinfo to use with it) through
// job.ResolveWhole, once.
func (a *Assembler) resolveWhole(ctx context.Context, job *NarJob) {
	if job.Whole != nil || job.ResolveWhole == nil {
		return
	}
	if w, ni := job.ResolveWhole(ctx); w != nil && ni != nil {
		job.Whole, job.Info = w, ni
	}
	job.ResolveWhole = nil
}

// narSources returns the chunk sources for m in order, each NarSources narrowed to m;
// covers is true when one of them expects to supply every chunk.
func (a *Assembler) narSources(ctx context.Context, m *manifest.Manifest) (srcs []ChunkSource, covers bool) {
	srcs = make([]ChunkSource, 0, len(a.Sources))
	for _, s := range a.Sources {
		if ns, ok := s.(NarSources); ok {
			src, c := ns.ForNar(ctx, m)
			srcs = append(srcs, src)
			covers = covers || c
			continue
		}
		srcs = append(srcs, s)
	}
	return srcs, covers
}

// checkManifest rejects a manifest that can't describe this NAR before any chunk is
// fetched for it.
func checkManifest(m *manifest.Manifest, info *NarInfo) error {
	if m.NarHash != info.NarHash || m.NarSize != info.NarSize {
		return fmt.Errorf("manifest describes %s/%d bytes, narinfo %s/%d", manifest.Key(m.NarHash), m.NarSize, info.NarHashString(), info.NarSize)
	}
	// Any chunker this shoal knows will do: chunks are checked by ID, whoever cut them.
	// A store cut differently from the daemon only shares fewer chunks with it.
	if _, err := chunk.ParseIdentity(m.Chunker); err != nil {
		return err
	}
	return m.Validate()
}

// missing prices m against what is local: the chunks absent from the local cache, and
// the bytes that must be downloaded for them, as deltas where their base chunks are
// local (see priceNar).
func (a *Assembler) missing(m *manifest.Manifest) (narPrice, error) {
	ids := make([]chunk.ID, len(m.Entries))
	for i, e := range m.Entries {
		ids[i] = e.ID
	}
	have, err := a.Cache.HasChunks(ids)
	if err != nil {
		return narPrice{}, fmt.Errorf("checking local chunks: %w", err)
	}
	baseIDs := make([]chunk.ID, len(m.Bases))
	for i, b := range m.Bases {
		baseIDs[i] = b.ID
	}
	baseLocal := make([]bool, len(baseIDs))
	if len(baseIDs) > 0 {
		if baseLocal, err = a.Cache.HasChunks(baseIDs); err != nil {
			return narPrice{}, fmt.Errorf("checking local base chunks: %w", err)
		}
	}
	free := make([]bool, len(ids))
	for _, s := range a.Sources {
		h, ok := s.(ChunkHolder)
		if !ok {
			continue
		}
		held, err := h.Holds(ids)
		if err != nil {
			return narPrice{}, fmt.Errorf("asking %s which chunks it holds: %w", s.Name(), err)
		}
		for i := range free {
			free[i] = free[i] || held[i]
		}
		if len(baseIDs) == 0 {
			continue
		}
		if held, err = h.Holds(baseIDs); err != nil {
			return narPrice{}, fmt.Errorf("asking %s which base chunks it holds: %w", s.Name(), err)
		}
		for i := range baseLocal {
			baseLocal[i] = baseLocal[i] || held[i]
		}
	}
	return priceNar(m, have, free, baseLocal), nil
}

// ChunkHolder is a ChunkSource that knows without a network round trip which chunks
// it holds, as the local /nix/store does. Its chunks cost no download, so missing
// counts them as absent from the cache but leaves their bytes out of the price.
type ChunkHolder interface {
	ChunkSource
	Holds(ids []chunk.ID) ([]bool, error)
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
// cache. The manifest is marked verified only when the whole NAR matched.
// useDelta, parallel to m.Entries, says which missing chunks to ask for as deltas first.
func (a *Assembler) fromChunks(ctx context.Context, job NarJob, m *manifest.Manifest, p *Progress, gen int, sources []ChunkSource, useDelta []bool) error {
	digest := sha256.Sum256(job.ManifestRaw)
	verified, err := a.Cache.IsVerified(p.Key, digest)
	if err != nil {
		return err
	}
	window := a.Window
	if window <= 0 {
		window = 32
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	slots := make([]*slot, len(m.Entries))
	for i := range slots {
		slots[i] = &slot{ready: make(chan struct{})}
	}
	g, gctx := errgroup.WithContext(ctx)
	sem := make(chan struct{}, window)
	g.Go(func() error {
		for i, e := range m.Entries {
			select {
			case sem <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			var dr *deltaReq
			if i < len(useDelta) && useDelta[i] {
				dr = newDeltaReq(m, i)
			}
			g.Go(func() error {
				s := slots[i]
				s.raw, s.fresh, s.err = a.obtain(gctx, e, dr, !verified, sources)
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
			if err := a.Cache.PutChunks(ctx, batch); err != nil {
				return fmt.Errorf("keeping chunks: %w", err)
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
		return err
	}
	if !verified {
		var sum [32]byte
		h.Sum(sum[:0])
		if sum != job.Info.NarHash || size != job.Info.NarSize {
			return fmt.Errorf("%w: assembled %d bytes hashing %s", ErrNarMismatch, size, manifest.Key(sum))
		}
		if err := a.Cache.MarkVerified(p.Key, digest); err != nil {
			return err
		}
	}
	if err := a.Cache.PutManifest(p.Key, job.ManifestRaw); err != nil {
		return fmt.Errorf("keeping manifest: %w", err)
	}
	return nil
}

// obtain returns a chunk's raw bytes (when needRaw) and, if it came from a remote source,
// the checked object to keep. Local objects are checked too: a disk can rot. With dr
// set, sources are asked for a delta against dr's bases before the full chunk.
func (a *Assembler) obtain(ctx context.Context, e manifest.Entry, dr *deltaReq, needRaw bool, sources []ChunkSource) (raw, fresh []byte, err error) {
	obj, err := a.Cache.GetChunk(ctx, e.ID)
	if err == nil {
		if !needRaw {
			return nil, nil, nil
		}
		raw, err = a.Codec.Open(nil, e.ID, obj, int(e.Size))
		if err == nil {
			return raw, nil, nil
		}
		a.log().Warn("local chunk corrupt; dropping it", "chunk", e.ID.String(), "err", err)
		_ = a.Cache.DeleteChunk(e.ID)
	} else if !errors.Is(err, localcache.ErrNotFound) {
		return nil, nil, fmt.Errorf("reading local chunk: %w", err)
	}
	// Concurrent NARs sharing a chunk fetch it once.
	v, err, _ := a.fetches.Do(e.ID.String(), func() (any, error) {
		select {
		case a.fetchSem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-a.fetchSem }()
		return a.fetchRemote(ctx, e, dr, sources)
	})
	if err != nil {
		return nil, nil, err
	}
	f := v.(fetched)
	return f.raw, f.obj, nil
}

type fetched struct{ raw, obj []byte }

// fetchRemote asks each source in turn for e: for its delta first when dr is set and
// the source serves deltas, then for the full chunk. A delta that fails in any way is
// only a failed attempt; a peer that sends a wrong delta may just hold other bases.
func (a *Assembler) fetchRemote(ctx context.Context, e manifest.Entry, dr *deltaReq, sources []ChunkSource) (fetched, error) {
	var errs []error
	for _, src := range sources {
		if ds, ok := src.(DeltaSource); ok && dr != nil {
			f, err := a.fetchDelta(ctx, e, dr, src, ds, sources)
			if err == nil {
				return f, nil
			}
			if ctx.Err() != nil {
				return fetched{}, ctx.Err()
			}
			a.deltaFailed(e.ID, err)
			errs = append(errs, err)
		}
		const attempts = 2
		for try := 0; try < attempts; try++ {
			obj, err := src.Chunk(ctx, e.ID)
			if err != nil {
				if errors.Is(err, ErrNotFound) || ctx.Err() != nil {
					errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
					break
				}
				errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
					return fetched{}, ctx.Err()
				}
				continue
			}
			a.count(src.Name(), int64(len(obj)))
			raw, err := a.Codec.Open(nil, e.ID, obj, int(e.Size))
			if err == nil && len(raw) != int(e.Size) {
				err = fmt.Errorf("chunk is %d bytes, manifest says %d", len(raw), e.Size)
			}
			if err != nil {
				a.log().Warn("chunk from source failed its check", "source", src.Name(), "chunk", e.ID.String(), "err", err)
				errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
				if r, ok := src.(BadObjectReporter); ok {
					// The source drops whoever sent it and answers from elsewhere.
					r.BadObject(e.ID, err)
					continue
				}
				break // a source that lies once isn't asked again for this chunk
			}
			return fetched{raw: raw, obj: obj}, nil
		}
	}
	if len(errs) == 0 {
		return fetched{}, fmt.Errorf("chunk %s: %w: no chunk source configured", e.ID, ErrNotFound)
	}
	return fetched{}, errors.Join(errs...)
}

// fromWhole streams the whole NAR from the upstream, verifying it while cutting it into
// chunks that are kept, so later versions of the package can reuse them.
func (a *Assembler) fromWhole(ctx context.Context, job NarJob, p *Progress, gen int) (*manifest.Manifest, error) {
	nar, err := job.Whole.OpenNAR(ctx, job.Info)
	if err != nil {
		return nil, err
	}
	defer nar.Close()
	// Build hashes what it reads; the limit stops an upstream that sends more than the
	// narinfo promised, and the check after Build does the rest.
	vr := io.LimitReader(nar, int64(job.Info.NarSize)+1)
	var batch []localcache.ChunkPut
	var pending []manifest.Entry
	var batchBytes int
	flush := func() error {
		if len(batch) > 0 {
			if err := a.Cache.PutChunks(ctx, batch); err != nil {
				return fmt.Errorf("keeping chunks: %w", err)
			}
			batch, batchBytes = batch[:0], 0
		}
		p.publish(gen, pending...)
		pending = pending[:0]
		return nil
	}
	m, err := manifest.Build(ctx, vr, a.Params, func(id chunk.ID, raw []byte) (int, error) {
		obj := a.Codec.Encode(nil, raw)
		batch = append(batch, localcache.ChunkPut{ID: id, Obj: obj})
		batchBytes += len(obj)
		pending = append(pending, manifest.Entry{ID: id, Size: uint32(len(raw)), StoredSize: uint32(len(obj))})
		if len(batch) >= 64 || batchBytes >= 16<<20 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		return len(obj), nil
	})
	a.count("upstream", int64(job.Info.FileSize))
	if err != nil {
		return nil, err
	}
	if m.NarHash != job.Info.NarHash || m.NarSize != job.Info.NarSize {
		return nil, fmt.Errorf("%w: got %d bytes hashing sha256:%s", ErrNarMismatch, m.NarSize, manifest.Key(m.NarHash))
	}
	if err := flush(); err != nil {
		return nil, err
	}
	raw, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := a.Cache.PutManifest(p.Key, raw); err != nil {
		return nil, fmt.Errorf("keeping manifest: %w", err)
	}
	if err := a.Cache.MarkVerified(p.Key, sha256.Sum256(raw)); err != nil {
		return nil, err
	}
	return m, nil
}

// LocalChunk reads a chunk from the local cache and checks it against its ID; a chunk
// that fails is dropped so the next request fetches it again.
func (a *Assembler) LocalChunk(ctx context.Context, dst []byte, e manifest.Entry) ([]byte, error) {
	obj, err := a.Cache.GetChunk(ctx, e.ID)
	if err != nil {
		return nil, fmt.Errorf("reading local chunk %s: %w", e.ID, err)
	}
	raw, err := a.Codec.Open(dst[:0], e.ID, obj, int(e.Size))
	if err != nil {
		_ = a.Cache.DeleteChunk(e.ID)
		return nil, fmt.Errorf("local chunk %s: %w", e.ID, err)
	}
	if len(raw) != int(e.Size) {
		return nil, fmt.Errorf("local chunk %s is %d bytes, manifest says %d", e.ID, len(raw), e.Size)
	}
	return raw, nil
}
