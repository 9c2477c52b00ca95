package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/internal/lru"
	"github.com/shoal-nix/shoal/manifest"
)

// DeltaSuffix is appended to a source's name in the byte counters for the delta objects
// it sent ("store-delta"), so metrics and tests can tell deltas from full chunks.
const DeltaSuffix = "-delta"

// OverreadSuffix is appended to a source's name in the byte counters for the bytes read
// between wanted objects of a pack ("store-overread"): one request for two neighbours
// costs less than two, and these bytes are the price.
const OverreadSuffix = "-overread"

// EventDeltaFailed is counted (through Counters.Event) each time a delta could not be
// used: the source lacked it, it did not decode, or it rebuilt other bytes. The chunk
// then comes as a full object; a steady count means a store whose deltas are broken.
const EventDeltaFailed = "delta_failed"

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
func (f *Fetcher) deltaFailed(id chunk.ID, err error) {
	f.log().Debug("delta unusable; fetching the full chunk", "chunk", id.String(), "err", err)
	f.event(EventDeltaFailed)
}

// fetchDelta asks o for e as a delta against dr's bases and decodes it with the base
// chunks read from the local offers. Every failure is the caller's cue to fetch the
// full chunk instead.
func (f *Fetcher) fetchDelta(ctx context.Context, e manifest.Entry, dr *deltaReq, o *offered, locals []*offered) (fetched, error) {
	name := o.src.Name()
	obj, err := o.Delta(ctx, e.ID, dr.ids)
	if err != nil {
		return fetched{}, fmt.Errorf("%s: delta: %w", name, err)
	}
	f.count(name+DeltaSuffix, int64(len(obj)))
	// The dictionary and the decoded chunk are the memory a delta costs beyond the
	// window's chunks; bounding the decodes in flight bounds it.
	select {
	case f.deltaSem <- struct{}{}:
	case <-ctx.Done():
		return fetched{}, ctx.Err()
	}
	defer func() { <-f.deltaSem }()
	dict, err := f.dictionary(ctx, dr, locals)
	if err != nil {
		return fetched{}, fmt.Errorf("%s: delta: %w", name, err)
	}
	raw, err := f.Deltas.OpenDelta(nil, e.ID, obj, dict, int(e.Size))
	if err == nil && len(raw) != int(e.Size) {
		err = fmt.Errorf("delta rebuilds %d bytes, manifest says %d", len(raw), e.Size)
	}
	if err != nil {
		return fetched{}, fmt.Errorf("%s: delta: %w", name, err)
	}
	// Kept uncompressed (chunk.EncodeStored): compressing the rebuilt chunk for the cache
	// would cost more CPU than decoding the delta, while the NAR waits on it.
	return fetched{raw: raw, obj: chunk.EncodeStored(nil, raw)}, nil
}

// dictionary concatenates the raw bytes of dr's base chunks, each read from a local
// offer and checked against its ID.
func (f *Fetcher) dictionary(ctx context.Context, dr *deltaReq, locals []*offered) ([]byte, error) {
	var total int
	for _, b := range dr.bases {
		total += int(b.Size)
	}
	if total == 0 || total > chunk.MaxDictSize {
		return nil, fmt.Errorf("dictionary of %d bytes outside 1..%d", total, chunk.MaxDictSize)
	}
	dict := make([]byte, 0, total)
	for _, b := range dr.bases {
		raw, err := f.baseChunk(ctx, b, locals)
		if err != nil {
			return nil, fmt.Errorf("base chunk %s: %w", b.ID, err)
		}
		dict = append(dict, raw...)
	}
	return dict, nil
}

// baseChunk returns base chunk b's raw bytes, from the base cache or a local offer.
func (f *Fetcher) baseChunk(ctx context.Context, b manifest.BaseChunk, locals []*offered) ([]byte, error) {
	if raw, ok := f.bases.get(b.ID); ok {
		return raw, nil
	}
	e := manifest.Entry{ID: b.ID, Size: b.Size}
	var errs []error
	for _, o := range locals {
		obj, err := o.Chunk(ctx, e)
		if err == nil {
			var raw []byte
			if raw, err = f.open(obj, b.ID, int(b.Size)); err == nil {
				f.bases.put(b.ID, raw)
				return raw, nil
			}
			o.Reject(b.ID, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", o.src.Name(), err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no local source")
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
