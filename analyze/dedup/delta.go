package dedup

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/klauspost/compress/zstd"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/nixname"
	"golang.org/x/sync/errgroup"
)

// DeltaCost is what one NAR costs a client upgrading from its base: the previous
// version of the same package among the NARs analyzed (chosen as publish chooses a
// base, but only among versions before it, since a client upgrades forward).
type DeltaCost struct {
	// Base is the index of the base in Result.NARs, or -1 when the NAR is the
	// first version of its package analyzed; the other fields are then zero.
	Base int
	// NewChunks are the chunks the base lacks: what the client fetches.
	NewChunks uint64
	NewBytes  uint64   // their uncompressed size
	NewStored []uint64 // per level: those chunks as full objects
	// Deltas counts the new chunks whose delta is worth keeping (delta.Worth at the
	// level publish compresses chunks at, zstd default).
	Deltas uint64
	// Stored is per level what the client fetches with deltas: each new chunk's
	// delta where it is worth keeping against that level's full object, else the
	// full object.
	Stored []uint64
}

// DeltaUpgrades sums the costs of the NARs that have a base at level index l: full
// new chunks, with deltas, and the source cache's compressed NARs (ok false when
// some NAR has no source size).
func (r *Result) DeltaUpgrades(c *ConfigResult, l int) (chunks, deltas, source uint64, ok bool) {
	ok = true
	for i, d := range c.Deltas {
		if d.Base < 0 {
			continue
		}
		chunks += d.NewStored[l]
		deltas += d.Stored[l]
		source += r.NARs[i].FileSize
		ok = ok && r.NARs[i].FileSize > 0
	}
	return chunks, deltas, source, ok
}

// HasDeltas reports whether the run measured deltas.
func (r *Result) HasDeltas() bool { return len(r.Configs) > 0 && r.Configs[0].Deltas != nil }

// versionBases returns, per source, the index of its base among the sources: the
// sources are ordered by package name and Nix's version order, and each takes its
// base among the ones before it.
func versionBases(sources []Source) []int {
	type item struct {
		i                      int
		pname, version, suffix string
	}
	items := make([]item, len(sources))
	for i, s := range sources {
		p, v := nixname.Split(nixname.FromStorePath(s.Name))
		v, suf := nixname.SplitOutput(v)
		items[i] = item{i, p, v, suf}
	}
	slices.SortStableFunc(items, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.pname, b.pname), cmp.Compare(a.suffix, b.suffix), nixname.CompareVersions(a.version, b.version))
	})
	hash := func(i int) (h [32]byte) {
		binary.LittleEndian.PutUint64(h[:], uint64(i+1))
		return h
	}
	bases := make([]int, len(sources))
	var earlier []delta.NAR
	for k, it := range items {
		if k > 0 && items[k-1].pname != it.pname {
			earlier = earlier[:0]
		}
		bases[it.i] = -1
		if b, ok := delta.PickBase(sources[it.i].Name, hash(it.i), earlier); ok {
			bases[it.i] = int(binary.LittleEndian.Uint64(b.NarHash[:])) - 1
		}
		earlier = append(earlier, delta.NAR{StorePath: sources[it.i].Name, NarHash: hash(it.i)})
	}
	return bases
}

// measureDeltas fills every configuration's Deltas. Each NAR that is a base or has
// one is read once more, into a temporary file, so that a base's chunks can be read
// back by offset without holding a NAR in memory; the files go as soon as no later
// upgrade needs them.
func measureDeltas(ctx context.Context, sources []Source, states []*configState, res *Result, opts Options) error {
	bases := versionBases(sources)
	levels := len(res.Levels)
	for ci := range res.Configs {
		res.Configs[ci].Deltas = make([]DeltaCost, len(sources))
		for i := range sources {
			res.Configs[ci].Deltas[i] = DeltaCost{Base: bases[i], NewStored: make([]uint64, levels), Stored: make([]uint64, levels)}
		}
	}
	lastUse := map[int]int{} // NAR index -> the last upgrade (by new NAR index) reading it
	for i, b := range bases {
		if b >= 0 {
			lastUse[b] = max(lastUse[b], i)
			lastUse[i] = max(lastUse[i], i)
		}
	}
	files := map[int]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	spool := func(i int) (*os.File, error) {
		if f, ok := files[i]; ok {
			return f, nil
		}
		f, err := os.CreateTemp(opts.TempDir, "shoal-analyze-*.nar")
		if err != nil {
			return nil, fmt.Errorf("measuring deltas: %w", err)
		}
		files[i] = f
		rc, err := sources[i].Open(ctx)
		if err != nil {
			return nil, fmt.Errorf("measuring deltas: opening %s: %w", sources[i].Name, err)
		}
		defer rc.Close()
		if _, err := io.Copy(f, rc); err != nil {
			return nil, fmt.Errorf("measuring deltas: reading %s: %w", sources[i].Name, err)
		}
		return f, nil
	}
	worthLevel := max(slices.Index(res.Levels, zstd.SpeedDefault), 0)
	dc := chunk.NewDeltaCodec(opts.DeltaLevel, opts.Jobs)
	defer dc.Close()
	nBases := cmp.Or(opts.DeltaBases, delta.DefaultBases)
	upgrades, measured := 0, 0
	for _, b := range bases {
		if b >= 0 {
			upgrades++
		}
	}
	for i, b := range bases {
		if b < 0 {
			continue
		}
		bf, err := spool(b)
		if err != nil {
			return err
		}
		nf, err := spool(i)
		if err != nil {
			return err
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(max(opts.Jobs, 1))
		for ci, st := range states {
			g.Go(func() error {
				err := st.deltaCost(gctx, bf, nf, res.NARs[i].NarSize, dc, nBases, worthLevel, &res.Configs[ci].Deltas[i])
				if err != nil {
					return fmt.Errorf("measuring deltas of %s against %s, %s: %w", sources[i].Name, sources[b].Name, st.cfg, err)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		measured++
		opts.step("deltas", measured, upgrades)
		for _, j := range []int{b, i} {
			if f, ok := files[j]; ok && lastUse[j] <= i {
				f.Close()
				os.Remove(f.Name())
				delete(files, j)
			}
		}
	}
	return nil
}

// cut calls fn with each chunk of r as this configuration cuts it, and its offset.
func (s *configState) cut(r io.Reader, fn func(off uint64, raw []byte) error) error {
	chunker, err := chunk.NewChunker(r, s.cfg.Params)
	if err != nil {
		return err
	}
	var off uint64
	seg := func(r io.Reader) error {
		chunker.Reset(r)
		for {
			raw, err := chunker.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := fn(off, raw); err != nil {
				return err
			}
			off += uint64(len(raw))
		}
	}
	if s.cfg.Strategy == FileBoundaries {
		return splitNAR(r, seg)
	}
	return seg(r)
}

// deltaCost cuts the base and the new NAR as this configuration does and prices
// each chunk of the new NAR the base lacks, as a full object (sizes measured by Run)
// and as a delta against the base chunks publish would choose (delta.Aligner).
// worthLevel is the index of the level whose full object a delta must beat to be
// kept (publish compares with its zstd default objects).
func (s *configState) deltaCost(ctx context.Context, base, nar *os.File, narSize uint64, dc *chunk.DeltaCodec, nBases, worthLevel int, out *DeltaCost) error {
	var layout delta.Layout
	var ids []chunk.ID
	err := s.cut(io.NewSectionReader(base, 0, 1<<62), func(off uint64, raw []byte) error {
		ids = append(ids, chunk.Sum(raw))
		layout.Offsets = append(layout.Offsets, off)
		layout.Sizes = append(layout.Sizes, uint32(len(raw)))
		layout.NarSize = off + uint64(len(raw))
		return nil
	})
	if err != nil {
		return fmt.Errorf("cutting the base: %w", err)
	}
	align := layout.NewAligner(ids, narSize)
	seen := map[chunk.ID]bool{}
	var dict, obj []byte
	return s.cut(io.NewSectionReader(nar, 0, 1<<62), func(off uint64, raw []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		id := chunk.Sum(raw)
		idx, inBase := align.Next(id, off, uint32(len(raw)), nBases)
		if inBase || seen[id] {
			return nil
		}
		seen[id] = true
		s.mu.Lock()
		info := s.seen[id]
		s.mu.Unlock()
		if info == nil {
			return fmt.Errorf("chunk %s was not seen by the first pass: the NAR changed", id)
		}
		out.NewChunks++
		out.NewBytes += uint64(len(raw))
		deltaSize := -1
		if len(raw) <= chunk.MaxDeltaChunk {
			if len(idx) > 0 {
				dict = dict[:0]
				for _, j := range idx { // in dictionary order
					n := len(dict)
					dict = slices.Grow(dict, int(layout.Sizes[j]))[:n+int(layout.Sizes[j])]
					if _, err := base.ReadAt(dict[n:], int64(layout.Offsets[j])); err != nil {
						return fmt.Errorf("reading base chunk %d: %w", j, err)
					}
				}
				var err error
				if obj, err = dc.EncodeDelta(obj[:0], raw, dict); err != nil {
					return err
				}
				if delta.Worth(len(obj), int(info.stored[worthLevel])) {
					deltaSize = len(obj)
					out.Deltas++
				}
			}
		}
		for l := range out.Stored {
			full := uint64(info.stored[l])
			out.NewStored[l] += full
			if deltaSize >= 0 && uint64(deltaSize) < full {
				out.Stored[l] += uint64(deltaSize)
			} else {
				out.Stored[l] += full
			}
		}
		return nil
	})
}
