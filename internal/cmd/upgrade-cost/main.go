// Command upgrade-cost reads a chunk store's manifests and prints, for each upgrade
// along a list of store paths (each path from the one before it), what a client
// holding the previous path fetches: its new chunks as full objects, and the same
// chunks as deltas where the manifest offers one against that previous path. It also
// times decoding those chunks both ways. scripts/measure-deltas.sh runs it.
//
//	go run ./internal/cmd/upgrade-cost STORE HASH_PART...
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: upgradecost STORE HASH_PART...")
		os.Exit(2)
	}
	if err := run(context.Background(), os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "upgradecost:", err)
		os.Exit(1)
	}
}

type nar struct {
	ni  *nixcache.NarInfo
	m   *manifest.Manifest
	raw int // encoded manifest bytes
}

func run(ctx context.Context, storeURL string, hashParts []string) error {
	s, err := chunkstore.Open(storeURL, nil)
	if err != nil {
		return err
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		return err
	}
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()

	var prev *nar
	fmt.Println("path\tnar_bytes\tsource_bytes\tnew_chunks\tnew_chunk_bytes\tas_deltas\tdelta_path_bytes\tmanifest_bytes\tplain_decode_MBps\tdelta_decode_MBps")
	for _, hp := range hashParts {
		raw, err := s.NarInfo(ctx, hp)
		if err != nil {
			return err
		}
		ni, err := nixcache.ParseNarInfo(raw)
		if err != nil {
			return err
		}
		m, mraw, err := s.Manifest(ctx, ni.NarHash)
		if err != nil {
			return err
		}
		cur := &nar{ni: ni, m: m, raw: len(mraw)}
		if prev != nil {
			if err := upgrade(ctx, s, codec, dc, prev, cur); err != nil {
				return fmt.Errorf("%s: %w", ni.StorePath, err)
			}
		}
		prev = cur
	}
	return nil
}

// upgrade prints the cost of going from prev to cur. A delta counts only when cur's
// base is prev: a client holding prev holds exactly those base chunks.
func upgrade(ctx context.Context, s *chunkstore.Store, codec *chunk.Codec, dc *chunk.DeltaCodec, prev, cur *nar) error {
	have := map[chunk.ID]bool{}
	for _, e := range prev.m.Entries {
		have[e.ID] = true
	}
	usable := cur.m.BaseNarHash == prev.ni.NarHash
	var newChunks, deltas int
	var chunkBytes, deltaPath, rawBytes int64
	var plain, viaDelta time.Duration
	baseRaw := map[chunk.ID][]byte{}
	for i, e := range cur.m.Entries {
		if have[e.ID] {
			continue
		}
		have[e.ID] = true // a chunk twice in one NAR is fetched once
		newChunks++
		chunkBytes += int64(e.StoredSize)
		rawBytes += int64(e.Size)
		obj, err := s.Chunk(ctx, e.ID)
		if err != nil {
			return err
		}
		start := time.Now()
		if _, err := codec.Open(nil, e.ID, obj, int(e.Size)); err != nil {
			return err
		}
		plain += time.Since(start)

		bases, did, size, ok := cur.m.DeltaOf(i)
		if !usable || !ok || size >= e.StoredSize {
			deltaPath += int64(e.StoredSize)
			viaDelta += time.Since(start)
			continue
		}
		deltas++
		deltaPath += int64(size)
		dobj, err := s.Delta(ctx, did)
		if err != nil {
			return err
		}
		var dict []byte
		for _, b := range bases {
			r, ok := baseRaw[b.ID]
			if !ok {
				bobj, err := s.Chunk(ctx, b.ID)
				if err != nil {
					return err
				}
				if r, err = codec.Open(nil, b.ID, bobj, int(b.Size)); err != nil {
					return err
				}
				baseRaw[b.ID] = r
			}
			dict = append(dict, r...)
		}
		// A client's dictionary is its local chunks, already decoded: only the
		// delta's own decoding is timed.
		start = time.Now()
		if _, err := dc.OpenDelta(nil, e.ID, dobj, dict, int(e.Size)); err != nil {
			return errors.Join(fmt.Errorf("chunk %d", i), err)
		}
		viaDelta += time.Since(start)
	}
	mbps := func(d time.Duration) float64 {
		if d <= 0 {
			return 0
		}
		return float64(rawBytes) / 1e6 / d.Seconds()
	}
	fmt.Printf("%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t%.0f\n", cur.ni.StorePath, cur.ni.NarSize, cur.ni.FileSize,
		newChunks, chunkBytes, deltas, deltaPath, cur.raw, mbps(plain), mbps(viaDelta))
	return nil
}
