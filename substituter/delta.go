package substituter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/lru"
	"github.com/shoal-nix/shoal/localcache"
	"github.com/shoal-nix/shoal/manifest"
)

// DeltaSuffix is appended to a source's name in the byte counters for the delta objects
// it sent ("store-delta"), so metrics and tests can tell deltas from full chunks.
const DeltaSuffix = "-delta"

// EventDeltaFailed is counted (through an EventCounter) each time a delta could not be
// used: the source lacked it, it did not decode, or it rebuilt other bytes. The chunk
// then comes as a full object; a steady count means a store whose deltas are broken.
const EventDeltaFailed = "delta_failed"

// EventCounter is a Counters that also counts named events.
type EventCounter interface {
	Event(name string)
}

// RawChunkHolder is a ChunkHolder that can hand out a chunk's raw bytes directly. The
// local /nix/store reads raw bytes from disk; building a delta's dictionary from them
// skips compressing each base chunk only to decompress it again.
type RawChunkHolder interface {
	ChunkHolder
	RawChunk(ctx context.Context, id chunk.ID) ([]byte, error)
}

// narPrice is what assembling a NAR from chunks costs: per missing entry, its delta
// where the delta's base chunks are local and it is smaller than the full object,
// else the full object; nothing for chunks the local /nix/store holds.
type narPrice struct {
	Missing    int    // distinct chunks absent from the local cache
	Download   int    // those of them no ChunkHolder holds: fetched from afar
	Bytes      uint64 // bytes to download, deltas and full objects
	Deltas     int    // distinct missing chunks priced as deltas
	DeltaBytes uint64 // their deltas' bytes
	FullBytes  uint64 // their full objects' bytes, what the deltas save against
	// useDelta says, per entry, to ask for its delta before its full object.
	useDelta []bool
}

// DeltaShare is the fraction of the chunks to download that come as deltas.
func (p narPrice) DeltaShare() float64 {
	if p.Download == 0 {
		return 0
	}
	return float64(p.Deltas) / float64(p.Download)
}

// priceNar prices m's entries. have says which entries the local cache holds, held
// which ones a ChunkHolder holds (free to read), and baseLocal, parallel to m.Bases,
// which base chunks are in either. A chunk that appears twice is paid for once.
func priceNar(m *manifest.Manifest, have, held, baseLocal []bool) narPrice {
	p := narPrice{useDelta: make([]bool, len(m.Entries))}
	seen := make(map[chunk.ID]bool)
	for i, e := range m.Entries {
		if have[i] {
			continue
		}
		first := !seen[e.ID]
		seen[e.ID] = true
		if first {
			p.Missing++
		}
		if held[i] {
			continue
		}
		if first {
			p.Download++
		}
		cost := uint64(e.StoredSize)
		if d, ok := deltaUsable(m, i, baseLocal); ok {
			p.useDelta[i] = true
			if first {
				p.Deltas++
				p.DeltaBytes += uint64(d)
				p.FullBytes += cost
			}
			cost = uint64(d)
		}
		if first {
			p.Bytes += cost
		}
	}
	return p
}

// deltaUsable returns the delta size of entry i when all its base chunks are local and
// the delta is smaller than the full object.
func deltaUsable(m *manifest.Manifest, i int, baseLocal []bool) (uint32, bool) {
	if i >= len(m.Deltas) || len(m.Deltas[i].Bases) == 0 {
		return 0, false
	}
	d := m.Deltas[i]
	if d.StoredSize >= m.Entries[i].StoredSize {
		return 0, false
	}
	for _, b := range d.Bases {
		if int(b) >= len(baseLocal) || !baseLocal[b] {
			return 0, false
		}
	}
	return d.StoredSize, true
}

// deltaReq is what fetching one entry as a delta needs: its base chunks in dictionary
// order.
type deltaReq struct {
	bases []manifest.BaseChunk
	ids   []chunk.ID
}

func newDeltaReq(m *manifest.Manifest, i int) *deltaReq {
	bases, _, _, ok := m.DeltaOf(i)
	if !ok {
		return nil
	}
	r := &deltaReq{bases: bases, ids: make([]chunk.ID, len(bases))}
	for j, b := range bases {
		r.ids[j] = b.ID
	}
	return r
}

// deltaFailed notes a delta that could not be used. Debug only: the full chunk follows,
// and a store without the delta is normal; the counter shows when it is not.
func (a *Assembler) deltaFailed(id chunk.ID, err error) {
	a.log().Debug("delta unusable; fetching the full chunk", "chunk", id.String(), "err", err)
	if ec, ok := a.Counters.(EventCounter); ok {
		ec.Event(EventDeltaFailed)
	}
}

// fetchDelta asks src for e as a delta against dr's bases and decodes it. Every
// failure is the caller's cue to fetch the full chunk instead.
func (a *Assembler) fetchDelta(ctx context.Context, e manifest.Entry, dr *deltaReq, src ChunkSource, ds DeltaSource, sources []ChunkSource) (fetched, error) {
	obj, err := ds.Delta(ctx, e.ID, dr.ids)
	if err != nil {
		return fetched{}, fmt.Errorf("%s: delta: %w", src.Name(), err)
	}
	a.count(src.Name()+DeltaSuffix, int64(len(obj)))
	// The dictionary and the decoded chunk are the memory a delta costs beyond the
	// window's chunks; bounding the decodes in flight bounds it.
	select {
	case a.deltaSem <- struct{}{}:
	case <-ctx.Done():
		return fetched{}, ctx.Err()
	}
	defer func() { <-a.deltaSem }()
	dict, err := a.dictionary(ctx, dr, sources)
	if err != nil {
		return fetched{}, fmt.Errorf("%s: delta: %w", src.Name(), err)
	}
	raw, err := a.Deltas.OpenDelta(nil, e.ID, obj, dict, int(e.Size))
	if err == nil && len(raw) != int(e.Size) {
		err = fmt.Errorf("delta rebuilds %d bytes, manifest says %d", len(raw), e.Size)
	}
	if err != nil {
		return fetched{}, fmt.Errorf("%s: delta: %w", src.Name(), err)
	}
	return fetched{raw: raw, obj: a.Codec.Encode(nil, raw)}, nil
}

// dictionary concatenates the raw bytes of dr's base chunks, each read from the local
// cache or from a ChunkHolder and checked against its ID.
func (a *Assembler) dictionary(ctx context.Context, dr *deltaReq, sources []ChunkSource) ([]byte, error) {
	var total int
	for _, b := range dr.bases {
		total += int(b.Size)
	}
	if total == 0 || total > chunk.MaxDictSize {
		return nil, fmt.Errorf("dictionary of %d bytes outside 1..%d", total, chunk.MaxDictSize)
	}
	dict := make([]byte, 0, total)
	for _, b := range dr.bases {
		n := len(dict)
		var err error
		dict, err = a.baseChunk(ctx, dict, b, sources)
		if err != nil {
			return nil, fmt.Errorf("base chunk %s: %w", b.ID, err)
		}
		if len(dict)-n != int(b.Size) {
			return nil, fmt.Errorf("base chunk %s is %d bytes, manifest says %d", b.ID, len(dict)-n, b.Size)
		}
	}
	return dict, nil
}

// baseChunk appends base chunk b's raw bytes to dst.
func (a *Assembler) baseChunk(ctx context.Context, dst []byte, b manifest.BaseChunk, sources []ChunkSource) ([]byte, error) {
	if raw, ok := a.bases.get(b.ID); ok {
		return append(dst, raw...), nil
	}
	n := len(dst)
	out, err := a.readBaseChunk(ctx, dst, b, sources)
	if err == nil {
		a.bases.put(b.ID, out[n:])
	}
	return out, err
}

func (a *Assembler) readBaseChunk(ctx context.Context, dst []byte, b manifest.BaseChunk, sources []ChunkSource) ([]byte, error) {
	obj, err := a.Cache.GetChunk(ctx, b.ID)
	if err == nil {
		if out, err := a.Codec.Open(dst, b.ID, obj, int(b.Size)); err == nil {
			return out, nil
		}
		// A rotten local chunk is dropped by whoever reads it for its own NAR.
	} else if !errors.Is(err, localcache.ErrNotFound) {
		return nil, fmt.Errorf("reading local chunk: %w", err)
	}
	errs := []error{errors.New("not in the local cache")}
	for _, src := range sources {
		switch h := src.(type) {
		case RawChunkHolder:
			raw, err := h.RawChunk(ctx, b.ID)
			if err == nil && chunk.Sum(raw) != b.ID {
				err = fmt.Errorf("bytes hash to %s: %w", chunk.Sum(raw), chunk.ErrCorrupt)
			}
			if err == nil {
				return append(dst, raw...), nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
		case ChunkHolder:
			obj, err := h.Chunk(ctx, b.ID)
			if err == nil {
				var out []byte
				if out, err = a.Codec.Open(dst, b.ID, obj, int(b.Size)); err == nil {
					return out, nil
				}
			}
			errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
		}
	}
	return nil, errors.Join(errs...)
}

// baseCache keeps the raw bytes of recently used base chunks. Neighbouring chunks of a
// NAR are usually deltas against overlapping bases (the base chunks at the same place
// and their neighbours), so each base would otherwise be read and decompressed once per
// delta that uses it. Bounded by bytes, least recently used out first; the zero value
// is ready to use; safe for concurrent use.
type baseCache struct {
	once sync.Once
	raw  *lru.Cache[chunk.ID, []byte]
}

// baseCacheBytes bounds the base cache: a few dictionaries' worth, small against the
// NAR window's chunks.
const baseCacheBytes = 8 << 20

func (c *baseCache) cache() *lru.Cache[chunk.ID, []byte] {
	c.once.Do(func() { c.raw = lru.New[chunk.ID, []byte](baseCacheBytes, 0) })
	return c.raw
}

func (c *baseCache) get(id chunk.ID) ([]byte, bool) { return c.cache().Get(id) }

// put keeps a copy of raw: callers pass slices of buffers they reuse.
func (c *baseCache) put(id chunk.ID, raw []byte) {
	if len(raw) > baseCacheBytes {
		return
	}
	c.cache().Add(id, bytes.Clone(raw), int64(len(raw)))
}

// size returns the bytes held.
func (c *baseCache) size() int64 {
	_, n := c.cache().Size()
	return n
}
