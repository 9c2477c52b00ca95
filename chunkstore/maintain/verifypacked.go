package maintain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/chain"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// packedLoc is where a pack index says an object lies.
type packedLoc struct {
	pack   chunk.ID
	off    uint64
	length uint32
}

type packedKey struct {
	kind chunkstore.ObjectKind
	id   chunk.ID
}

// verifyPacked is Verify for a packed store (layout 3): every pack index is read; the
// packs (or a sample) are read whole, must hash to their pack ID, match their index
// and hold chunk objects that decode to their IDs; every manifest (or a sample) must be
// version 3 and each location must name an object the pack's index lists there, of
// that kind, ID and length; deltas are decoded against their base chunks; narinfos
// must have their manifests.
func verifyPacked(ctx context.Context, s *chunkstore.Store, inv *chunkstore.Inventory, opts VerifyOptions, jobs int, log *slog.Logger) (VerifyReport, int, error) {
	var rep VerifyReport
	var mu sync.Mutex
	problems := 0
	problem := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		log.Error("verify: " + msg)
		mu.Lock()
		defer mu.Unlock()
		problems++
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, msg)
		}
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		return rep, 0, err
	}
	defer codec.Close()
	deltas := chunk.NewDeltaCodec(0, jobs)
	defer deltas.Close()

	reader, err := chunkstore.NewPackReader(s, chunkstore.ReadOptions{})
	if err != nil {
		return rep, 0, err
	}
	defer reader.Close()
	chains := chain.New(s, reader, chain.Options{})

	// Every index, whatever the sample: manifests are checked against them.
	havePack := make(map[chunk.ID]bool, len(inv.Packs))
	for _, id := range inv.Packs {
		havePack[id] = true
	}
	indexes := map[chunk.ID]map[uint64]chunkstore.PackObject{}
	where := map[packedKey]packedLoc{}
	{
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(jobs)
		for _, id := range inv.PackIndexes {
			g.Go(func() error {
				x, err := s.PackIndex(gctx, id)
				if errors.Is(err, shoal.ErrNotFound) {
					return nil
				}
				if err != nil {
					if gctx.Err() == nil {
						problem("pack %s: %v", id, err)
						return nil
					}
					return err
				}
				if !havePack[id] {
					problem("pack %s: has an index but no pack file", id)
				}
				byOff := make(map[uint64]chunkstore.PackObject, len(x.Objects))
				mu.Lock()
				defer mu.Unlock()
				for _, o := range x.Objects {
					byOff[o.Offset] = o
					where[packedKey{o.Kind, o.ID}] = packedLoc{id, o.Offset, o.Length}
				}
				indexes[id] = byOff
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return rep, problems, fmt.Errorf("verify %s: %w", s, err)
		}
	}

	packs := sample(inv.PackIndexes, opts.Sample)
	narinfos, manifests := sample(inv.NarInfos, opts.Sample), sample(inv.Manifests, opts.Sample)
	rep.NarInfos, rep.Manifests = len(narinfos), len(manifests)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, id := range packs {
		objs, ok := indexes[id]
		if !ok || !havePack[id] {
			continue
		}
		g.Go(func() error {
			var size uint64
			for _, o := range objs {
				size = max(size, o.Offset+uint64(o.Length))
			}
			data, err := blob.ReadAll(gctx, s.Backend(), chunkstore.PackKey(id), int64(size))
			if errors.Is(err, shoal.ErrNotFound) {
				return nil // collected since the listing
			}
			if err != nil {
				if gctx.Err() == nil {
					problem("pack %s: %v", id, err)
					return nil
				}
				return err
			}
			if got := chunk.ID(blake3.Sum256(data)); got != id || uint64(len(data)) != size {
				problem("pack %s: %d bytes hashing to %s, its index describes %d bytes", id, len(data), got, size)
				return nil
			}
			n := 0
			for _, o := range objs {
				if o.Kind != chunkstore.KindChunk {
					continue
				}
				n++
				if _, err := codec.Open(nil, o.ID, data[o.Offset:o.Offset+uint64(o.Length)], chunk.MaxChunkSize); err != nil {
					problem("pack %s: chunk object at %d: %v", id, o.Offset, err)
				}
			}
			mu.Lock()
			rep.Packs++
			rep.Chunks += n
			mu.Unlock()
			return nil
		})
	}
	for _, h := range manifests {
		g.Go(func() error {
			m, err := readManifest(gctx, s, h, problem)
			if m == nil {
				return err
			}
			if !m.Packed() && len(m.Entries) > 0 {
				problem("manifest %s: version %d in a packed store: it says nowhere where its chunks lie", manifest.Key(h), m.Version())
				return nil
			}
			bad := false
			check := func(what string, i int, l manifest.Loc, kind chunkstore.ObjectKind, id chunk.ID, length uint32) {
				pack := m.Packs[l.Pack]
				objs, ok := indexes[pack]
				if !ok {
					problem("manifest %s: %s of entry %d is in pack %s, which the store lacks", manifest.Key(h), what, i, pack)
					bad = true
					return
				}
				o, ok := objs[l.Offset]
				if !ok || o.Kind != kind || o.ID != id || o.Length != length {
					problem("manifest %s: %s of entry %d (%s): pack %s holds no such object of %d bytes at %d", manifest.Key(h), what, i, id, pack, length, l.Offset)
					bad = true
				}
			}
			for i, e := range m.Entries {
				if m.Form(i) == manifest.Full {
					check("chunk object", i, m.Locs[i], chunkstore.KindChunk, e.ID, e.StoredSize)
				}
				if _, did, size, ok := m.DeltaOf(i); ok {
					check("delta object", i, m.Deltas[i].Loc, chunkstore.KindDelta, did, size)
				}
			}
			if bad {
				return nil
			}
			n, err := verifyDeltasWith(gctx, codec, deltas, m, func(format string, a ...any) {
				problem("manifest %s: "+format, append([]any{manifest.Key(h)}, a...)...)
			}, func(i int, id chunk.ID) ([]byte, string, error) {
				l := m.Deltas[i].Loc
				obj, err := s.ReadPackRange(gctx, m.Packs[l.Pack], l.Offset, m.Deltas[i].StoredSize)
				return obj, fmt.Sprintf("pack %s at %d", m.Packs[l.Pack], l.Offset), err
			}, func(id chunk.ID) ([]byte, error) {
				l, ok := where[packedKey{chunkstore.KindChunk, id}]
				if !ok {
					return nil, fmt.Errorf("base chunk %s: %w", id, shoal.ErrNotFound)
				}
				return s.ReadPackRange(gctx, l.pack, l.off, l.length)
			})
			if err == nil && m.Chained() {
				var c int
				c, err = verifyChains(gctx, chains, m, problem)
				n += c
			}
			mu.Lock()
			rep.Deltas += n
			mu.Unlock()
			return err
		})
	}
	for _, hp := range narinfos {
		g.Go(func() error { return verifyNarInfo(gctx, s, hp, problem) })
	}
	if err := g.Wait(); err != nil {
		return rep, problems, fmt.Errorf("verify %s: %w", s, err)
	}
	return rep, problems, nil
}

// verifyChains rebuilds every entry of a delta-primary store's manifest that has no
// chunk object of its own, through its chain of base manifests, each chunk checked
// against its ID on the way: a missing base manifest, a collected pack or a corrupt
// delta anywhere down the chain is a problem of this manifest. It returns how many
// entries it rebuilt.
func verifyChains(ctx context.Context, chains *chain.Resolver, m *manifest.Manifest, problem func(string, ...any)) (int, error) {
	var entries []int
	for i := range m.Entries {
		if m.Form(i) != manifest.Full {
			entries = append(entries, i)
		}
	}
	n := 0
	_, err := chains.Entries(ctx, m, entries, func(int, []byte, []byte) error {
		n++
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		problem("manifest %s: %d of %d entries without a chunk object rebuilt from their chains, then: %v", manifest.Key(m.NarHash), n, len(entries), err)
	}
	return n, nil
}
