// Package delta decides what delta objects are made against: which older NAR is a
// new NAR's base, and which of the base's chunks form each new chunk's dictionary.
// Publish uses it to write deltas and analyze to price them, so what an operator
// measures is what a publish would store.
package delta

import (
	"cmp"
	"math"
	"slices"
	"sort"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/nixname"
)

// DefaultBases is how many base chunks make a dictionary by default. Measured on
// consecutive Go toolchains and x/ module source trees (docs/deltas.md): one base
// chunk misses content that moved across a chunk boundary; three catch nearly all of
// it; five save a few percent more bytes at a third less encoding speed.
const DefaultBases = 3

// KeepRatio is the largest delta, as a fraction of the full chunk object, worth
// storing: a delta barely smaller than the chunk costs a store object, a manifest
// record and a client's base lookup for almost nothing.
const KeepRatio = 0.9

// Worth reports whether a delta of deltaSize bytes is worth keeping next to a full
// chunk object of fullSize bytes.
func Worth(deltaSize, fullSize int) bool {
	return deltaSize > 0 && float64(deltaSize) <= KeepRatio*float64(fullSize)
}

// NAR is a candidate base: a published NAR and the store path it is the contents of.
type NAR struct {
	StorePath string
	NarHash   [32]byte
	NarSize   uint64
}

// PickBase chooses the base of a NAR of storePath among cands: of the NARs whose
// store path names the same package (as Nix splits names) and the same output, the
// one with the highest version below storePath's, in Nix's version order, or equal to
// it (another build of the same version is the closest relative there is); when none
// is, the newest. A client upgrading holds the previous version, and when it does not
// (the first version published, a downgrade) the newest is the closest guess. Candidates with the target's own NarHash are not bases. Ties go to the
// lexically smallest store path, so the choice does not depend on cands' order.
func PickBase(storePath string, narHash [32]byte, cands []NAR) (NAR, bool) {
	pname, version := nixname.Split(nixname.FromStorePath(storePath))
	version, suffix := nixname.SplitOutput(version)
	var below, newest *NAR
	var belowVer, newestVer string
	better := func(best *NAR, bestVer string, c *NAR, v string) bool {
		if best == nil {
			return true
		}
		if d := nixname.CompareVersions(v, bestVer); d != 0 {
			return d > 0
		}
		return cmp.Less(c.StorePath, best.StorePath)
	}
	for i := range cands {
		c := &cands[i]
		if c.NarHash == narHash {
			continue
		}
		p, v := nixname.Split(nixname.FromStorePath(c.StorePath))
		v, suf := nixname.SplitOutput(v)
		if p != pname || suf != suffix {
			continue
		}
		if nixname.CompareVersions(v, version) <= 0 && better(below, belowVer, c, v) {
			below, belowVer = c, v
		}
		if better(newest, newestVer, c, v) {
			newest, newestVer = c, v
		}
	}
	switch {
	case below != nil:
		return *below, true
	case newest != nil:
		return *newest, true
	}
	return NAR{}, false
}

// Layout is where a base NAR's chunks lie: their offsets and sizes in NAR order.
type Layout struct {
	NarSize uint64
	Offsets []uint64
	Sizes   []uint32
}

// Around returns the indexes, in dictionary order (see At), of up to n base chunks around the place in
// the base that corresponds to a new chunk at off (size bytes) of a NAR of narSize
// bytes, by relative offset: the base chunk holding the same relative offset of the
// chunk's middle, and its neighbours. An Aligner does better where the two NARs share
// chunks; this is its fallback before the first shared chunk.
func (l Layout) Around(narSize, off uint64, size uint32, n int) []int {
	if narSize == 0 || len(l.Offsets) == 0 {
		return nil
	}
	mid := float64(off) + float64(size)/2
	return l.At(uint64(math.Min(mid*float64(l.NarSize)/float64(narSize), float64(l.NarSize-1))), n)
}

// At returns the indexes of up to n base chunks around base offset rel: the chunk
// holding it and its neighbours, in dictionary order, farthest first and the chunk
// holding rel last. zstd codes a match the cheaper the nearer it lies, and the end of
// the dictionary is nearest to the chunk being coded; on x/tools this order made
// deltas 7 % smaller than NAR order. The dictionary they make stays within
// chunk.MaxDictSize and n within chunk.MaxDeltaBases.
func (l Layout) At(rel uint64, n int) []int {
	n = min(n, chunk.MaxDeltaBases, len(l.Offsets))
	if n <= 0 {
		return nil
	}
	i := sort.Search(len(l.Offsets), func(j int) bool { return l.Offsets[j] > rel }) - 1
	i = max(i, 0)
	lo := i - (n-1)/2
	if n%2 == 0 && rel-l.Offsets[i] < uint64(l.Sizes[i])/2 {
		lo = i - n/2 // an even count leans towards the nearer neighbour
	}
	lo = max(0, min(lo, len(l.Offsets)-n))
	hi := lo + n // exclusive
	var dict uint64
	for j := lo; j < hi; j++ {
		dict += uint64(l.Sizes[j])
	}
	// Too large a dictionary: drop the chunk farthest from the centre.
	for dict > chunk.MaxDictSize && hi-lo > 1 {
		if hi-1-i >= i-lo {
			hi--
			dict -= uint64(l.Sizes[hi])
		} else {
			dict -= uint64(l.Sizes[lo])
			lo++
		}
	}
	if dict > chunk.MaxDictSize {
		return nil
	}
	out := make([]int, 0, hi-lo)
	for j := lo; j < hi; j++ {
		out = append(out, j)
	}
	dist := func(j int) int { return max(j-i, i-j) }
	slices.SortStableFunc(out, func(a, b int) int { return dist(b) - dist(a) })
	return out
}

// Aligner follows a new NAR chunk by chunk, in order, and says which base chunks
// each new chunk most likely came from. Chunks both NARs have are anchors: after
// one, a new chunk maps to the same distance past the anchor's end in the base. Where
// files were added or removed, relative offsets drift by megabytes, while the distance
// from the last unchanged chunk stays right; on consecutive Go toolchains this halved
// the deltas of an upgrade that added files (docs/deltas.md). Before the first anchor
// the relative offset is the guess.
type Aligner struct {
	base    Layout
	at      map[chunk.ID]uint64 // base offset of each base chunk, its first occurrence
	narSize uint64

	anchored        bool
	newEnd, baseEnd uint64 // where the last shared chunk ends, in each NAR
}

// NewAligner returns an aligner for a new NAR of narSize bytes against the base laid
// out as l, whose chunk IDs are ids (parallel to l.Offsets).
func (l Layout) NewAligner(ids []chunk.ID, narSize uint64) *Aligner {
	at := make(map[chunk.ID]uint64, len(ids))
	for i, id := range ids {
		if _, ok := at[id]; !ok {
			at[id] = l.Offsets[i]
		}
	}
	return &Aligner{base: l, at: at, narSize: narSize}
}

// Next is told the new NAR's chunks in order, each with its offset and size. For a
// chunk the base has it reports inBase (a client holding the base has it: no delta);
// for any other it returns up to n base chunk indexes for its dictionary.
func (a *Aligner) Next(id chunk.ID, off uint64, size uint32, n int) (bases []int, inBase bool) {
	if b, ok := a.at[id]; ok {
		a.anchored, a.newEnd, a.baseEnd = true, off+uint64(size), b+uint64(size)
		return nil, true
	}
	if !a.anchored || len(a.base.Offsets) == 0 {
		return a.base.Around(a.narSize, off, size, n), false
	}
	mid := off + uint64(size)/2
	rel := a.baseEnd + (mid - min(mid, a.newEnd))
	return a.base.At(min(rel, a.base.NarSize-1), n), false
}
