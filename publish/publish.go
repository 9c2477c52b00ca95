// Package publish turns a Nix binary cache into a shoal chunk store: for each store path
// it checks the narinfo's signature, decompresses and verifies the NAR, cuts it into
// chunks, and writes the chunks the store lacks and the delta objects of its new
// chunks, then the manifest, then the narinfo. That order means a reader never finds a
// narinfo whose manifest, chunks or deltas are missing, and a rerun after an
// interruption finishes the job.
//
// # Deltas
//
// A NAR's base is an older NAR of the same package (see delta.PickBase), from the
// store or published earlier in the same run. Every chunk of the NAR that the base
// lacks, which is what a client upgrading from the base would download, also gets a
// delta object against the base chunks at the same place in the base (delta.Aligner:
// the same distance past the last chunk both NARs share), kept when clearly smaller
// than the chunk's own object.
//
// # Delta-primary stores
//
// A packed store can keep a new chunk as its delta alone (Options.DeltaPrimary,
// docs/format.md "Store layout 3"): a client then rebuilds it from the base NAR's
// chunks, found through the base's manifest, which may again be a delta: the chain.
// Publish bounds every chain by Options.MaxChain, reading the depths from the base
// manifests, and writes a full object (a keyframe) where the bound, or the lack of a
// usable delta, calls for one. It writes a NAR's manifest only once the manifests of
// its chain are in the store.
package publish

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"golang.org/x/sync/errgroup"
)

// Options tune a publish run.
type Options struct {
	Params chunk.Params
	// Jobs is how many NARs are processed at once; 0 means one per core.
	Jobs int
	// Logger receives one line per NAR and per refusal; nil discards.
	Logger *slog.Logger
	// Progress, when set, is told how many NAR bytes have been processed so far and
	// the total of the NARs selected, so a caller can draw a bar.
	Progress func(done, total int64)
	// NARDone, when set, is called as each NAR is finished: published, found
	// complete already, or refused. It is called from several goroutines.
	NARDone func()

	// Deltas makes delta objects for each NAR with a base (see the package comment).
	Deltas bool
	// DeltaBases is how many base chunks make a delta's dictionary; 0 means
	// delta.DefaultBases.
	DeltaBases int
	// DeltaLevel is the zstd level of delta objects; 0 means zstd.SpeedDefault.
	DeltaLevel zstd.EncoderLevel
	// BaseCacheBytes bounds the decoded base chunks kept in memory; 0 means 64 MiB.
	BaseCacheBytes int

	// Layout is the store layout a new store gets: chunkstore.FormatVersion (one object
	// per chunk) or chunkstore.FormatPacked (pack files); 0 means the store's own, or
	// chunkstore.FormatVersion for a new store. An existing store of another layout is
	// refused.
	Layout int
	// PackSize is the size at which a pack is closed, in a packed store; 0 means
	// DefaultPackSize.
	PackSize int
	// MinReuseRun, in a packed store, is the least a run of chunks the store already
	// holds back to back must weigh (stored bytes) to be reused where it lies; the
	// chunks of a shorter run are written again beside the NAR's new chunks. A NAR
	// sharing chunks with many releases would otherwise lie in many short runs across
	// their packs, a ranged request each. 0 means DefaultMinReuseRun; negative
	// reuses every run.
	MinReuseRun int

	// DeltaPrimary makes the store delta-primary (packed stores only; an existing
	// packed store becomes one from now on, a delta-primary store stays one whatever
	// this says): a new chunk of a NAR with a base that has a delta against the base's
	// chunks is stored as that delta only, and a chunk the base stores that way is
	// referred to the base, as long as no entry is deeper than MaxChain manifests
	// (docs/format.md, version 4). The rest are full objects, the keyframes.
	DeltaPrimary bool
	// MaxChain is the depth bound of a new delta-primary store; 0 means the store's
	// own, or chunkstore.DefaultMaxChain for a new one. A deeper bound makes a smaller
	// store and more reads for a client that lacks the previous releases.
	MaxChain int
	// KeyframeLevel is the zstd level of the full chunk objects of a delta-primary
	// store; 0 means DefaultKeyframeLevel.
	KeyframeLevel zstd.EncoderLevel

	// Shard, when set, makes this run one worker of several publishing into one store
	// at once: it takes only the store paths Shard.Has, and learns what the store
	// holds without reading an index of the whole store (docs/scale.md): delta bases
	// through the package name index, and in a packed store, chunks only from its
	// own run and its bases' manifests. A chunk another worker (or an earlier run)
	// wrote outside that lineage is written again: a duplicate a repack folds.
	Shard Shard
}

// Summary is what a run did, for the closing report.
type Summary struct {
	NARs        int   // NARs chunked and published in this run
	Skipped     int   // already complete in the store
	OtherShards int   // left to other workers of a sharded publish
	Refused     int   // bad signature, bad NAR, unreadable
	NarBytes    int64 // uncompressed bytes of the NARs published
	SourceBytes int64 // the source cache's compressed size (FileSize) of those NARs
	Chunks      int64 // chunks in the NARs published
	NewChunks   int64 // chunks the store did not have (sharded: that this worker did not know of)
	NewBytes    int64 // stored (compressed) bytes written for those chunks
	WithBase    int   // NARs published with deltas against a base (version 2 manifests)
	Deltas      int64 // delta objects in the manifests published
	DeltaBytes  int64 // their stored size
	DeltaSaved  int64 // full chunk objects minus deltas, over the chunks that have one
	Packs       int64 // pack files written, in a packed store
	PackBytes   int64 // their size
	// Rewritten counts chunks the store held that were written again because they lay
	// in runs shorter than MinReuseRun; RewrittenBytes is their stored size.
	Rewritten, RewrittenBytes int64
	// In a delta-primary store: chunks stored as their delta only (their delta objects
	// are counted in Deltas), entries referred to the base NAR, and full objects
	// written (keyframes, in NewChunks too), of which ChainCapped because a delta would
	// have made a chain deeper than MaxChain.
	DeltaOnly, InBase, Keyframes, KeyframeBytes, ChainCapped int64
	Elapsed                                                  time.Duration
}

// Publisher copies NARs from a binary cache into a store.
type Publisher struct {
	src    *nixcache.BinaryCache
	dst    *chunkstore.Store
	keys   *nixcache.Keyring
	codec  *chunk.Codec
	deltas *chunk.DeltaCodec
	bases  *baseCache
	// cpu holds a token per delta being encoded: deltas of all NARs together use at
	// most Jobs cores besides the NARs' own chunking.
	cpu  chan struct{}
	opts Options
	log  *slog.Logger
	// keyframes encodes the full objects of a delta-primary store: codec itself at
	// the default level.
	keyframes *chunk.Codec
	// packer is set for the length of a run on a packed store, and chains for one on
	// a delta-primary store.
	packer *packer
	chains *chains
}

// New returns a publisher; the caller closes it to release the codec's buffers.
func New(src *nixcache.BinaryCache, dst *chunkstore.Store, keys *nixcache.Keyring, opts Options) (*Publisher, error) {
	if err := opts.Params.Validate(); err != nil {
		return nil, fmt.Errorf("chunker parameters: %w", err)
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.DeltaBases <= 0 {
		opts.DeltaBases = delta.DefaultBases
	}
	if opts.DeltaBases > chunk.MaxDeltaBases {
		return nil, fmt.Errorf("%d delta bases: at most %d", opts.DeltaBases, chunk.MaxDeltaBases)
	}
	if opts.BaseCacheBytes <= 0 {
		opts.BaseCacheBytes = 64 << 20
	}
	if opts.MinReuseRun == 0 {
		opts.MinReuseRun = DefaultMinReuseRun
	}
	if opts.PackSize <= 0 {
		opts.PackSize = DefaultPackSize
	}
	if opts.PackSize > manifest.MaxPackSize/2 {
		return nil, fmt.Errorf("pack size %d: at most %d", opts.PackSize, manifest.MaxPackSize/2)
	}
	if opts.MaxChain < 0 || opts.MaxChain > chunkstore.MaxChainLimit {
		return nil, fmt.Errorf("chain bound %d: want 1 to %d", opts.MaxChain, chunkstore.MaxChainLimit)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		return nil, err
	}
	keyframes := codec
	if lvl := cmp.Or(opts.KeyframeLevel, DefaultKeyframeLevel); lvl != zstd.SpeedDefault {
		if keyframes, err = chunk.NewCodecLevel(lvl); err != nil {
			codec.Close()
			return nil, err
		}
	}
	return &Publisher{
		src: src, dst: dst, keys: keys, codec: codec, keyframes: keyframes,
		deltas: chunk.NewDeltaCodec(opts.DeltaLevel, opts.Jobs),
		bases:  newBaseCache(dst, codec, opts.BaseCacheBytes),
		cpu:    make(chan struct{}, opts.Jobs),
		opts:   opts, log: log,
	}, nil
}

// DefaultKeyframeLevel is the level of a delta-primary store's full chunk objects:
// the best, 8 to 9% smaller than the default on binaries and text alike, decoded as
// fast, encoded at about the speed publish already makes deltas at (docs/deltas.md,
// "Keyframe compression"). A plain store's objects stay at the default level: every
// chunk there is full, so its encoding speed is publish's.
const DefaultKeyframeLevel = zstd.SpeedBestCompression

// Close releases resources.
func (p *Publisher) Close() {
	if p.keyframes != p.codec {
		p.keyframes.Close()
	}
	p.codec.Close()
	p.deltas.Close()
}

// ErrRefused is returned (wrapped) by Run when at least one path could not be published;
// the others were.
var ErrRefused = errors.New("some store paths were not published")

// Run publishes the given store paths (hash parts). Paths that fail are logged and
// counted; Run goes on with the rest and reports ErrRefused at the end, so one bad
// narinfo doesn't stop a large publish.
func (p *Publisher) Run(ctx context.Context, hashParts []string) (Summary, error) {
	start := time.Now()
	var sum Summary
	if err := p.checkDestination(ctx); err != nil {
		return sum, err
	}
	meta, err := p.dst.Init(ctx, p.src.String(), p.opts.Params, chunkstore.Mode{Layout: p.opts.Layout, DeltaPrimary: p.opts.DeltaPrimary, MaxChain: p.opts.MaxChain}, start)
	if err != nil {
		return sum, err
	}
	switch {
	case meta.DeltaPrimary && !p.opts.Deltas:
		return sum, fmt.Errorf("store %s is delta-primary: its NARs are stored as deltas, which this publish was told not to make", p.dst)
	case !meta.DeltaPrimary && p.opts.KeyframeLevel != 0:
		return sum, fmt.Errorf("store %s is not delta-primary: a keyframe level applies to a delta-primary store only", p.dst)
	}
	if meta.Packed() {
		if p.packer, err = newPacker(ctx, p.dst, p.opts.PackSize, !p.opts.Shard.Sharded(), p.log); err != nil {
			return sum, err
		}
		defer func() { p.packer = nil }()
		loose := p.bases.fetch
		defer func() { p.bases.fetch = loose }()
		pk := p.packer
		p.bases.fetch = func(ctx context.Context, id chunk.ID) ([]byte, error) {
			return pk.object(ctx, chunkstore.KindChunk, id)
		}
		if meta.DeltaPrimary {
			p.chains = newChains(p, meta.MaxChain)
			defer func() { p.chains = nil }()
			p.log.Debug("delta-primary store", "max_chain", meta.MaxChain)
		}
	}

	// Narinfos first: they are small, they tell the total for the progress bar, and a
	// refused signature is reported before minutes of NAR work.
	infos := make([]*nixcache.NarInfo, len(hashParts))
	var refused, others atomic.Int64
	var total int64
	{
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4 * p.opts.Jobs)
		for i, hp := range hashParts {
			g.Go(func() error {
				ni, err := p.src.NarInfo(gctx, hp)
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					p.log.Error("skipping store path: narinfo unavailable", "path", hp, "err", err)
					refused.Add(1)
					return nil
				}
				if !p.opts.Shard.Has(ni.StorePath) {
					others.Add(1)
					return nil
				}
				if key, err := p.keys.Verify(ni); err != nil {
					p.log.Error("refusing store path: narinfo not signed by a trusted key", "path", ni.StorePath, "err", err)
					refused.Add(1)
					return nil
				} else {
					p.log.Debug("narinfo trusted", "path", ni.StorePath, "key", key)
				}
				infos[i] = ni
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return sum, err
		}
		sum.OtherShards = int(others.Load())
		for _, ni := range infos {
			if ni != nil {
				total += int64(ni.NarSize)
			}
		}
	}

	jobs, err := p.plan(ctx, infos)
	if err != nil {
		return sum, err
	}

	var (
		mu      sync.Mutex
		done    atomic.Int64
		claimed sync.Map // chunk ID -> *claim, while its write is in flight
	)
	progress := func(n int64) {
		d := done.Add(n)
		if p.opts.Progress != nil {
			p.opts.Progress(d, total)
		}
	}
	progress(0)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.opts.Jobs)
	// A packed store's manifests wait for their packs: commits run beside the jobs.
	// Not derived from gctx, which ends when the jobs do, before the last commits.
	commits, cctx := errgroup.WithContext(ctx)
	account := func(ctx context.Context, ni *nixcache.NarInfo, r result, err error) error {
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.log.Error("store path not published", "path", ni.StorePath, "err", err)
			refused.Add(1)
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if r.skipped {
			sum.Skipped++
			return nil
		}
		sum.NARs++
		sum.NarBytes += int64(ni.NarSize)
		sum.SourceBytes += int64(ni.FileSize)
		sum.Chunks += r.chunks
		sum.NewChunks += r.newChunks
		sum.NewBytes += r.newBytes
		if r.deltas > 0 {
			sum.WithBase++
		}
		sum.Deltas += r.deltas
		sum.DeltaBytes += r.deltaBytes
		sum.DeltaSaved += r.deltaSaved
		sum.Rewritten += r.rewritten
		sum.RewrittenBytes += r.rewrittenBytes
		sum.DeltaOnly += r.deltaOnly
		sum.InBase += r.inBase
		sum.Keyframes += r.keyframes
		sum.KeyframeBytes += r.keyframeBytes
		sum.ChainCapped += r.chainCapped
		return nil
	}
	// Jobs start in plan order, so a job waiting for its base holds a slot only while
	// an earlier job, which needs nothing later, is running.
	for _, j := range jobs {
		ni := j.ni
		g.Go(func() error {
			if p.opts.NARDone != nil {
				defer p.opts.NARDone()
			}
			r, err := p.publishOne(gctx, j, &claimed, progress)
			j.ok = err == nil
			close(j.done)
			if err == nil && r.commit != nil {
				commits.Go(func() error {
					err := r.commit(cctx)
					j.committedOK = err == nil
					close(j.committed)
					return account(cctx, ni, r, err)
				})
				return nil
			}
			j.committedOK = err == nil
			close(j.committed)
			return account(gctx, ni, r, err)
		})
	}
	err = g.Wait()
	if p.packer != nil {
		// Every NAR has handed its objects over: the last pack is as full as it gets.
		p.packer.flush()
		if cerr := commits.Wait(); err == nil {
			err = cerr
		}
		p.packer.wait()
		sum.Packs, sum.PackBytes = p.packer.packs.Load(), p.packer.bytes.Load()
	}
	sum.Refused = int(refused.Load())
	sum.Elapsed = time.Since(start)
	if err != nil {
		return sum, err
	}
	if sum.Refused > 0 {
		return sum, fmt.Errorf("%w: %d of %d", ErrRefused, sum.Refused, len(hashParts))
	}
	return sum, nil
}

type result struct {
	skipped                        bool
	chunks, newChunks, newBytes    int64
	base                           string // store path of the base, when deltas were made
	deltas, deltaBytes, deltaSaved int64
	rewritten, rewrittenBytes      int64
	deltaOnly, inBase              int64
	keyframes, keyframeBytes       int64
	chainCapped                    int64
	// commit, when set, finishes publishing the NAR (packed stores: see publishPacked).
	commit func(context.Context) error
}

func (p *Publisher) publishOne(ctx context.Context, j *job, claimed *sync.Map, progress func(int64)) (result, error) {
	var r result
	ni := j.ni
	hp := ni.HashPart()
	same, err := p.dst.SameNarInfo(ctx, hp, ni.Raw)
	if err != nil {
		return r, err
	}
	if same {
		// The narinfo is written last, so its presence means the rest is there, except
		// the NAR URL index for stores published before it existed: adding it here
		// makes a rerun of publish bring an old store up to date.
		if err := p.ensureNarURL(ctx, ni); err != nil {
			return r, err
		}
		if err := p.ensureName(ctx, ni); err != nil {
			return r, err
		}
		progress(int64(ni.NarSize))
		r.skipped = true
		return r, nil
	}
	var base *deltaBase
	if j.base != nil {
		if base, err = p.loadBase(ctx, j); err != nil {
			return r, err
		}
		if base != nil && p.packer != nil {
			// Without an index of the store, the base's manifest says where the
			// chunks this NAR shares with it lie.
			p.packer.learn(base.m)
		}
	}
	nar, err := p.src.OpenNAR(ctx, ni)
	if err != nil {
		return r, fmt.Errorf("opening NAR: %w", err)
	}
	defer nar.Close()
	// Build hashes what it reads; the limit stops a source that sends more than the
	// narinfo promised before it fills the store, and the check below does the rest.
	counted := &countingReader{r: io.LimitReader(nar, int64(ni.NarSize)+1), report: progress}
	if p.packer != nil {
		return p.publishPacked(ctx, j, base, counted)
	}

	// Chunk writes run in the background, several at once: each is fsynced, and
	// overlapping fsyncs share the file system's journal commits. The manifest waits
	// for all of them.
	writes, wctx := errgroup.WithContext(ctx)
	writes.SetLimit(16)
	var newChunks, newBytes atomic.Int64
	var deltas *deltaSet
	if base != nil {
		deltas = newDeltaSet(base, ni.NarSize, p.opts.DeltaBases)
	}
	var off uint64
	m, err := manifest.Build(ctx, counted, p.opts.Params, func(id chunk.ID, raw []byte) (int, error) {
		idx, at := int(r.chunks), off
		r.chunks++
		off += uint64(len(raw))
		obj := p.codec.Encode(nil, raw)
		if deltas != nil {
			if bases, _ := deltas.next(id, at, raw); len(bases) > 0 {
				raw, full := bytes.Clone(raw), len(obj)
				writes.Go(func() error { return p.makeDelta(wctx, deltas, idx, bases, id, raw, full) })
			}
		}
		// NARs published at once often share chunks: the first to claim one checks
		// the store and writes it; the others wait until it is in place (their
		// manifests must not land before it) and only count it.
		c := &claim{done: make(chan struct{})}
		if prev, dup := claimed.LoadOrStore(id, c); dup {
			prev := prev.(*claim)
			select {
			case <-prev.done:
			case <-wctx.Done():
				return 0, wctx.Err()
			}
			if prev.err == nil {
				return len(obj), nil
			}
			c = &claim{done: make(chan struct{})} // the claimant failed: write it here
		}
		writes.Go(func() error {
			wrote, err := p.putChunk(wctx, id, obj)
			c.err = err
			close(c.done)
			// Once the chunk is in place the store answers for it, so claims last only
			// while writes are in flight and memory doesn't grow with the run.
			claimed.CompareAndDelete(id, c)
			if wrote {
				newChunks.Add(1)
				newBytes.Add(int64(len(obj)))
			}
			return err
		})
		return len(obj), nil
	})
	werr := writes.Wait()
	r.newChunks, r.newBytes = newChunks.Load(), newBytes.Load()
	if err != nil {
		return r, fmt.Errorf("chunking NAR: %w", err)
	}
	if werr != nil {
		return r, fmt.Errorf("writing chunks: %w", werr)
	}
	if m.NarHash != ni.NarHash || m.NarSize != ni.NarSize {
		return r, fmt.Errorf("%w: got %d bytes hashing sha256:%s, narinfo says %d bytes, %s",
			nixcache.ErrNarMismatch, m.NarSize, manifest.Key(m.NarHash), ni.NarSize, ni.NarHashString())
	}
	attrs := []any{"path", ni.StorePath, "nar_bytes", ni.NarSize, "chunks", r.chunks, "new_chunks", r.newChunks, "new_bytes", r.newBytes}
	if deltas != nil {
		deltas.attach(m)
		r.base = base.nar.StorePath
		r.deltas, r.deltaBytes, r.deltaSaved = deltas.count, deltas.bytes, deltas.saved
		attrs = append(attrs, "base", r.base, "deltas", r.deltas, "delta_bytes", r.deltaBytes, "bytes_saved", r.deltaSaved)
	} else if j.base == nil && p.opts.Deltas {
		attrs = append(attrs, "base", "none")
	}
	if err := p.dst.PutManifest(ctx, m); err != nil {
		return r, err
	}
	// Between manifest and narinfo: a narinfo in the store always has its index entry,
	// and an entry without a narinfo is a miss for readers.
	if err := p.dst.PutNarURL(ctx, ni.URL, hp); err != nil {
		return r, err
	}
	if err := p.putName(ctx, ni); err != nil {
		return r, err
	}
	if err := p.dst.PutNarInfo(ctx, hp, ni.Raw); err != nil {
		return r, err
	}
	p.log.Info("published", attrs...)
	return r, nil
}

// ensureNarURL writes the NAR URL index entry of a published narinfo when it is missing.
func (p *Publisher) ensureNarURL(ctx context.Context, ni *nixcache.NarInfo) error {
	have, err := p.dst.HasNarURL(ctx, ni.URL)
	if err != nil || have {
		return err
	}
	return p.dst.PutNarURL(ctx, ni.URL, ni.HashPart())
}

// putName writes the NAR's package name index entry, so that sharded publishes find
// it as a delta base. A store path without a package name has none: it is nobody's
// base by name anyway.
func (p *Publisher) putName(ctx context.Context, ni *nixcache.NarInfo) error {
	if _, err := chunkstore.NameKey(ni.StorePath); err != nil {
		p.log.Debug("not in the name index", "path", ni.StorePath, "err", err)
		return nil
	}
	return p.dst.PutName(ctx, ni.StorePath)
}

// ensureName writes the name index entry of a published narinfo when it is missing:
// a rerun of publish brings a store from before the name index up to date.
func (p *Publisher) ensureName(ctx context.Context, ni *nixcache.NarInfo) error {
	if _, err := chunkstore.NameKey(ni.StorePath); err != nil {
		return nil
	}
	have, err := p.dst.HasName(ctx, ni.StorePath)
	if err != nil || have {
		return err
	}
	return p.dst.PutName(ctx, ni.StorePath)
}

// countingReader reports progress as bytes flow, in steps so the callback isn't hot.
type countingReader struct {
	r       io.Reader
	pending int64
	report  func(int64)
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.pending += int64(n)
	if c.pending >= 4<<20 || err != nil {
		c.report(c.pending)
		c.pending = 0
	}
	return n, err
}

// claim marks a chunk one NAR of this run is writing.
type claim struct {
	done chan struct{}
	err  error
}

// putChunk writes a chunk object unless the store already has it. A chunk the store
// has is refreshed instead (its modification time set to now): that costs the same
// one request as asking whether it exists, and it is what keeps a garbage collection
// running at the same time from deleting a chunk this NAR's manifest is about to
// reference (gc spares everything younger than its grace period).
func (p *Publisher) putChunk(ctx context.Context, id chunk.ID, obj []byte) (wrote bool, err error) {
	have, err := p.dst.RefreshChunk(ctx, id)
	if err != nil || have {
		return false, err
	}
	return true, p.dst.PutChunk(ctx, id, obj)
}
