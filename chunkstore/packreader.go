package chunkstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/manifest"
)

// PackRead is one chunk to get out of a packed store: the object of Length bytes at
// Offset in pack Pack, which must decode to Size bytes hashing to ID.
type PackRead struct {
	Pack   chunk.ID
	Offset uint64
	Length uint32
	ID     chunk.ID
	Size   uint32
	// Dict, when set, makes the object a delta object: once it has arrived, Dict is
	// called for its dictionary (the base chunks, concatenated in the manifest's
	// order) and the delta is decoded against it. Called at most once, from any
	// goroutine.
	Dict func() ([]byte, error)
}

// ChunkRead is the read of entry i's chunk object of a packed manifest.
func ChunkRead(m *manifest.Manifest, i int) (PackRead, error) {
	if !m.Packed() {
		return PackRead{}, fmt.Errorf("manifest %s (version %d) does not say where its objects lie", manifest.Key(m.NarHash), m.Version())
	}
	e, l := m.Entries[i], m.Locs[i]
	return PackRead{Pack: m.Packs[l.Pack], Offset: l.Offset, Length: e.StoredSize, ID: e.ID, Size: e.Size}, nil
}

// DeltaRead is the read of entry i's delta object of a packed manifest, decoded
// against dict; ok is false when the entry has no delta.
func DeltaRead(m *manifest.Manifest, i int, dict func() ([]byte, error)) (r PackRead, ok bool) {
	if !m.Packed() || i >= len(m.Deltas) || len(m.Deltas[i].Bases) == 0 {
		return PackRead{}, false
	}
	e, d := m.Entries[i], m.Deltas[i]
	return PackRead{Pack: m.Packs[d.Loc.Pack], Offset: d.Loc.Offset, Length: d.StoredSize, ID: e.ID, Size: e.Size, Dict: dict}, true
}

// ReadOptions tune a PackReader. Zero fields take the defaults.
type ReadOptions struct {
	// MaxGap is the most unwanted bytes read between two wanted objects of one pack
	// rather than making two requests; default 16 KiB, a fraction of a request's
	// fixed cost on any CDN or bucket.
	MaxGap int
	// Overread is how many unwanted bytes, as a share of the wanted bytes of a window,
	// may be read on top of MaxGap's to save requests: the smallest gaps are read
	// through first. Default 0.03; negative means none. A NAR made of chunks published with many
	// releases lies in runs across the packs of those releases; reading through the
	// few chunks between two runs costs far less than a request per run.
	Overread float64
	// MaxRange bounds one request; default 16 MiB, so a failed request costs a
	// bounded retry and a large NAR is fetched by several requests at once.
	MaxRange int
	// Window is how many wanted bytes are planned and fetched at once; default 64
	// MiB. Larger windows coalesce more and hold more memory.
	Window int
	// Parallel is how many requests are in flight at once; default 4.
	Parallel int
	// Attempts is how many times a request that failed in transit is sent;
	// default 3. Missing packs and short packs are not retried.
	Attempts int
}

func (o *ReadOptions) defaults() {
	if o.MaxGap <= 0 {
		o.MaxGap = 16 << 10
	}
	if o.Overread == 0 {
		o.Overread = 0.03
	}
	if o.MaxRange <= 0 {
		o.MaxRange = 16 << 20
	}
	if o.Window <= 0 {
		o.Window = 64 << 20
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
}

// ReadStats counts what a Read cost.
type ReadStats struct {
	Requests    int   // ranged requests sent, retries included
	BytesRead   int64 // bytes those requests returned
	BytesWanted int64 // bytes of the objects asked for
}

// PackReader fetches objects from a packed store with few ranged requests and checks
// each against its chunk ID before anyone sees a byte of it. It is safe for
// concurrent use.
type PackReader struct {
	st     *Store
	opts   ReadOptions
	codec  *chunk.Codec
	deltas *chunk.DeltaCodec
}

// NewPackReader returns a reader of s; Close releases its decoders.
func NewPackReader(s *Store, opts ReadOptions) (*PackReader, error) {
	opts.defaults()
	codec, err := chunk.NewCodec()
	if err != nil {
		return nil, err
	}
	return &PackReader{st: s, opts: opts, codec: codec, deltas: chunk.NewDeltaCodec(0, opts.Parallel)}, nil
}

// Close releases the reader's decoders.
func (r *PackReader) Close() {
	r.codec.Close()
	r.deltas.Close()
}

// Read fetches reads and calls fn once for each, in the order of reads, with the
// stored object and the chunk's checked bytes (fn may keep both; obj shares memory
// with its neighbours') or the reason it could not have them:
// the pack is missing (shoal.ErrNotFound) or shorter than the location says
// (blob.ErrRange) — a stale manifest, so fetch it again — the bytes there do not
// decode to the ID (chunk.ErrCorrupt), the dictionary could not be had, or the store
// failed after every attempt. Such an error is the caller's to handle (fall back to
// another source) and does not stop Read; an error fn returns does, and Read returns
// it. A cancelled ctx stops Read with its error.
//
// Reads are planned a window at a time: sorted by pack and offset, neighbours less
// than MaxGap apart become one request, and requests go out Parallel at once, those
// holding the earliest reads first. fn is called as soon as every earlier read is
// done, so a caller can stream a NAR while the rest of the window arrives.
func (r *PackReader) Read(ctx context.Context, reads []PackRead, fn func(i int, obj, raw []byte, err error) error) (ReadStats, error) {
	return r.read(ctx, reads, true, fn)
}

// ReadStored is Read for a caller that opens every object itself: fn gets each stored
// object as it lies in the pack, not decoded and not checked against its ID (raw is
// nil, and no PackRead needs its Dict), or the reason it could not be read. The daemon's
// fetcher decodes and checks each object anyway, to keep it; through Read, every
// object it got was decoded twice, and every delta's dictionary built twice.
func (r *PackReader) ReadStored(ctx context.Context, reads []PackRead, fn func(i int, obj []byte, err error) error) (ReadStats, error) {
	return r.read(ctx, reads, false, func(i int, obj, _ []byte, err error) error { return fn(i, obj, err) })
}

func (r *PackReader) read(ctx context.Context, reads []PackRead, open bool, fn func(i int, obj, raw []byte, err error) error) (ReadStats, error) {
	var stats ReadStats
	for start := 0; start < len(reads); {
		end, size := start, 0
		for end < len(reads) && (end == start || size+int(reads[end].Length) <= r.opts.Window) {
			size += int(reads[end].Length)
			end++
		}
		if err := r.window(ctx, reads[start:end], start, open, &stats, fn); err != nil {
			return stats, err
		}
		start = end
	}
	return stats, nil
}

// span is one ranged request: the bytes [off, end) of a pack, holding the reads
// members (indexes into the window).
type span struct {
	pack     chunk.ID
	off, end uint64
	members  []int
}

type readResult struct {
	done     chan struct{}
	obj, raw []byte
	err      error
}

func (r *PackReader) window(ctx context.Context, reads []PackRead, base int, open bool, stats *ReadStats, fn func(int, []byte, []byte, error) error) error {
	spans := r.plan(reads)
	results := make([]readResult, len(reads))
	for i := range results {
		results[i].done = make(chan struct{})
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	// Waited for before returning, so no request outlives the call.
	defer wg.Wait()
	for i := range reads {
		stats.BytesWanted += int64(reads[i].Length)
	}
	sem := make(chan struct{}, r.opts.Parallel)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k, sp := range spans {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				// Spans already sent finish themselves; these never will.
				for _, sp := range spans[k:] {
					r.finish(reads, results, sp, nil, open, ctx.Err())
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				buf, n, err := r.fetch(ctx, sp)
				mu.Lock()
				stats.Requests += n
				stats.BytesRead += int64(len(buf))
				mu.Unlock()
				r.finish(reads, results, sp, buf, open, err)
			}()
		}
	}()
	for i := range results {
		select {
		case <-results[i].done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := fn(base+i, results[i].obj, results[i].raw, results[i].err); err != nil {
			return err
		}
		results[i].obj, results[i].raw = nil, nil
	}
	return nil
}

// plan sorts a window's reads by where they lie and merges neighbours into spans:
// those less than MaxGap apart, then across the smallest remaining gaps while the
// bytes read through stay within Overread of the wanted bytes. Spans come in the order
// of the earliest read each holds.
func (r *PackReader) plan(reads []PackRead) []*span {
	spans := r.planNear(reads)
	var wanted int64
	for i := range reads {
		wanted += int64(reads[i].Length)
	}
	budget := int64(max(r.opts.Overread, 0) * float64(wanted))
	// Spans are in pack and offset order here; gap g lies between spans g and g+1.
	type gap struct {
		at   int
		size uint64
	}
	var gaps []gap
	for g := 0; g+1 < len(spans); g++ {
		if a, b := spans[g], spans[g+1]; a.pack == b.pack {
			gaps = append(gaps, gap{g, b.off - a.end})
		}
	}
	slices.SortFunc(gaps, func(a, b gap) int { return cmp.Or(cmp.Compare(a.size, b.size), cmp.Compare(a.at, b.at)) })
	// Merged spans are runs of neighbours: parent points toward a run's first span,
	// which holds the run's extent.
	parent := make([]int, len(spans))
	for i := range parent {
		parent[i] = i
	}
	var find func(int) int
	find = func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	extent := make([][2]uint64, len(spans))
	for i, sp := range spans {
		extent[i] = [2]uint64{sp.off, sp.end}
	}
	for _, g := range gaps {
		if int64(g.size) > budget {
			break
		}
		a, b := find(g.at), find(g.at+1)
		if extent[b][1]-extent[a][0] > uint64(r.opts.MaxRange) {
			continue
		}
		budget -= int64(g.size)
		parent[b] = a
		extent[a][1] = extent[b][1]
	}
	var merged []*span
	for i, sp := range spans {
		root := find(i)
		if root == i {
			merged = append(merged, &span{pack: sp.pack, off: extent[i][0], end: extent[i][1], members: sp.members})
			continue
		}
		m := merged[len(merged)-1] // the run's first span was appended just before
		m.members = append(m.members, sp.members...)
	}
	slices.SortFunc(merged, func(a, b *span) int { return cmp.Compare(slices.Min(a.members), slices.Min(b.members)) })
	return merged
}

// planNear sorts reads by where they lie and merges those less than MaxGap apart, in
// pack and offset order.
func (r *PackReader) planNear(reads []PackRead) []*span {
	order := make([]int, len(reads))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ra, rb := &reads[a], &reads[b]
		return cmp.Or(slices.Compare(ra.Pack[:], rb.Pack[:]), cmp.Compare(ra.Offset, rb.Offset), cmp.Compare(a, b))
	})
	var spans []*span
	var cur *span
	for _, i := range order {
		rd := &reads[i]
		end := rd.Offset + uint64(rd.Length)
		if cur != nil && cur.pack == rd.Pack && rd.Offset <= cur.end+uint64(r.opts.MaxGap) &&
			max(end, cur.end)-cur.off <= uint64(r.opts.MaxRange) {
			cur.end = max(cur.end, end)
			cur.members = append(cur.members, i)
			continue
		}
		cur = &span{pack: rd.Pack, off: rd.Offset, end: end, members: []int{i}}
		spans = append(spans, cur)
	}
	return spans
}

// fetch reads a span, sending the request again when it fails in transit. It returns
// the bytes and the number of requests sent.
func (r *PackReader) fetch(ctx context.Context, sp *span) ([]byte, int, error) {
	n := sp.end - sp.off
	var err error
	for attempt := 1; attempt <= r.opts.Attempts; attempt++ {
		var buf []byte
		buf, err = r.fetchOnce(ctx, sp, n)
		if err == nil {
			return buf, attempt, nil
		}
		if ctx.Err() != nil || errors.Is(err, shoal.ErrNotFound) || errors.Is(err, blob.ErrRange) {
			return nil, attempt, err
		}
	}
	return nil, r.opts.Attempts, err
}

func (r *PackReader) fetchOnce(ctx context.Context, sp *span, n uint64) ([]byte, error) {
	rc, err := r.st.b.OpenRange(ctx, PackKey(sp.pack), int64(sp.off), int64(n))
	if err != nil {
		return nil, fmt.Errorf("reading pack %s from %s: %w", sp.pack, r.st.b, err)
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("reading %d bytes at %d of pack %s from %s: %w", n, sp.off, sp.pack, r.st.b, err)
	}
	return buf, nil
}

// finish checks every read of a span against its ID, if asked to open them, and marks
// it done.
func (r *PackReader) finish(reads []PackRead, results []readResult, sp *span, buf []byte, open bool, err error) {
	for _, i := range sp.members {
		res := &results[i]
		if err != nil {
			res.err = err
		} else {
			rd := &reads[i]
			at := rd.Offset - sp.off
			obj := buf[at : at+uint64(rd.Length) : at+uint64(rd.Length)]
			if !open {
				res.obj = obj
			} else if res.raw, res.err = r.open(rd, obj); res.err == nil {
				res.obj = obj
			}
		}
		close(res.done)
	}
}

func (r *PackReader) open(rd *PackRead, obj []byte) ([]byte, error) {
	if rd.Dict == nil {
		raw, err := r.codec.Open(nil, rd.ID, obj, int(rd.Size))
		if err != nil {
			return nil, fmt.Errorf("chunk object at %d of pack %s: %w", rd.Offset, rd.Pack, err)
		}
		return raw, nil
	}
	dict, err := rd.Dict()
	if err != nil {
		return nil, fmt.Errorf("delta at %d of pack %s: its dictionary: %w", rd.Offset, rd.Pack, err)
	}
	raw, err := r.deltas.OpenDelta(nil, rd.ID, obj, dict, int(rd.Size))
	if err != nil {
		return nil, fmt.Errorf("delta at %d of pack %s: %w", rd.Offset, rd.Pack, err)
	}
	return raw, nil
}
