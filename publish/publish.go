// Package publish turns a Nix binary cache into a shoal chunk store: for each store path
// it checks the narinfo's signature, decompresses and verifies the NAR, cuts it into
// chunks, and writes the chunks the store lacks, then the manifest, then the narinfo.
// That order means a reader never finds a narinfo whose manifest or chunks are missing,
// and a rerun after an interruption finishes the job.
package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/store"
	"github.com/shoal-nix/shoal/substituter"
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
}

// Summary is what a run did, for the closing report.
type Summary struct {
	NARs        int   // NARs chunked and published in this run
	Skipped     int   // already complete in the store
	Refused     int   // bad signature, bad NAR, unreadable
	NarBytes    int64 // uncompressed bytes of the NARs published
	SourceBytes int64 // the source cache's compressed size (FileSize) of those NARs
	Chunks      int64 // chunks in the NARs published
	NewChunks   int64 // chunks the store did not have
	NewBytes    int64 // stored (compressed) bytes written for those chunks
	Elapsed     time.Duration
}

// Publisher copies NARs from a binary cache into a store.
type Publisher struct {
	src   *substituter.BinaryCache
	dst   *store.Store
	keys  *substituter.Keyring
	codec *chunk.Codec
	opts  Options
	log   *slog.Logger
}

// New returns a publisher; the caller closes it to release the codec's buffers.
func New(src *substituter.BinaryCache, dst *store.Store, keys *substituter.Keyring, opts Options) (*Publisher, error) {
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
	codec, err := chunk.NewCodec()
	if err != nil {
		return nil, err
	}
	return &Publisher{src: src, dst: dst, keys: keys, codec: codec, opts: opts, log: log}, nil
}

// Close releases resources.
func (p *Publisher) Close() { p.codec.Close() }

// ErrRefused is returned (wrapped) by Run when at least one path could not be published;
// the others were.
var ErrRefused = errors.New("some store paths were not published")

// Run publishes the given store paths (hash parts). Paths that fail are logged and
// counted; Run goes on with the rest and reports ErrRefused at the end, so one bad
// narinfo doesn't stop a large publish.
func (p *Publisher) Run(ctx context.Context, hashParts []string) (Summary, error) {
	start := time.Now()
	var sum Summary
	if _, err := p.dst.Init(ctx, p.src.String(), p.opts.Params, start); err != nil {
		return sum, err
	}

	// Narinfos first: they are small, they tell the total for the progress bar, and a
	// refused signature is reported before minutes of NAR work.
	infos := make([]*substituter.NarInfo, len(hashParts))
	var refused atomic.Int64
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
		for _, ni := range infos {
			if ni != nil {
				total += int64(ni.NarSize)
			}
		}
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
	for _, ni := range infos {
		if ni == nil {
			continue
		}
		g.Go(func() error {
			r, err := p.publishOne(gctx, ni, &claimed, progress)
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
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
			return nil
		})
	}
	err := g.Wait()
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
	skipped                     bool
	chunks, newChunks, newBytes int64
}

func (p *Publisher) publishOne(ctx context.Context, ni *substituter.NarInfo, claimed *sync.Map, progress func(int64)) (result, error) {
	var r result
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
		progress(int64(ni.NarSize))
		r.skipped = true
		return r, nil
	}
	nar, err := p.src.OpenNAR(ctx, ni)
	if err != nil {
		return r, fmt.Errorf("opening NAR: %w", err)
	}
	defer nar.Close()
	// Build hashes what it reads; the limit stops a source that sends more than the
	// narinfo promised before it fills the store, and the check below does the rest.
	counted := &countingReader{r: io.LimitReader(nar, int64(ni.NarSize)+1), report: progress}

	// Chunk writes run in the background, several at once: each is fsynced, and
	// overlapping fsyncs share the file system's journal commits. The manifest waits
	// for all of them.
	writes, wctx := errgroup.WithContext(ctx)
	writes.SetLimit(16)
	var newChunks, newBytes atomic.Int64
	m, err := manifest.Build(ctx, counted, p.opts.Params, func(id chunk.ID, raw []byte) (int, error) {
		r.chunks++
		obj := p.codec.Encode(nil, raw)
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
			substituter.ErrNarMismatch, m.NarSize, manifest.Key(m.NarHash), ni.NarSize, ni.NarHashString())
	}
	if err := p.dst.PutManifest(ctx, m); err != nil {
		return r, err
	}
	// Between manifest and narinfo: a narinfo in the store always has its index entry,
	// and an entry without a narinfo is a miss for readers.
	if err := p.dst.PutNarURL(ctx, ni.URL, hp); err != nil {
		return r, err
	}
	if err := p.dst.PutNarInfo(ctx, hp, ni.Raw); err != nil {
		return r, err
	}
	p.log.Info("published", "path", ni.StorePath, "nar_bytes", ni.NarSize, "chunks", r.chunks, "new_chunks", r.newChunks, "new_bytes", r.newBytes)
	return r, nil
}

// ensureNarURL writes the NAR URL index entry of a published narinfo when it is missing.
func (p *Publisher) ensureNarURL(ctx context.Context, ni *substituter.NarInfo) error {
	have, err := p.dst.HasNarURL(ctx, ni.URL)
	if err != nil || have {
		return err
	}
	return p.dst.PutNarURL(ctx, ni.URL, ni.HashPart())
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
