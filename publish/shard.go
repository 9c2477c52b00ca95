package publish

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/delta"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/nixname"
	"golang.org/x/sync/errgroup"
)

// Shard is one worker's part of a publish spread over several (docs/scale.md): of
// Count workers, the one numbered Index (from 0) takes the store paths whose package
// name hashes to Index. The zero Shard is an unsharded publish.
type Shard struct {
	Index, Count int
}

// ParseShard reads "I/N": worker I, from 0, of N.
func ParseShard(s string) (Shard, error) {
	i, n, ok := strings.Cut(s, "/")
	idx, err1 := strconv.Atoi(i)
	cnt, err2 := strconv.Atoi(n)
	if !ok || err1 != nil || err2 != nil || cnt < 1 || idx < 0 || idx >= cnt {
		return Shard{}, fmt.Errorf("shard %q: want I/N with 0 <= I < N, such as 0/4", s)
	}
	return Shard{Index: idx, Count: cnt}, nil
}

func (s Shard) String() string { return fmt.Sprintf("%d/%d", s.Index, s.Count) }

// Sharded reports whether the publish is one worker of several (or asked to behave
// like one with 0/1).
func (s Shard) Sharded() bool { return s.Count > 0 }

// ShardOf returns the shard a store path belongs to among n: FNV-1a (64 bits) of its
// package name as nixname.Split gives it, modulo n. Every version and output of a
// package lands on one worker, which then finds each NAR's delta base in its own run.
// A path without a package name goes by its hash part.
func ShardOf(storePath string, n int) int {
	key := ""
	if base := storePath[strings.LastIndexByte(storePath, '/')+1:]; len(base) > 33 && base[32] == '-' {
		key, _ = nixname.Split(base[33:])
		if key == "" {
			key = base[:32]
		}
	} else {
		key = base
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	return int(h.Sum64() % uint64(n))
}

// Has reports whether storePath is this worker's.
func (s Shard) Has(storePath string) bool {
	return !s.Sharded() || ShardOf(storePath, s.Count) == s.Index
}

// nameIndex finds, for the package names of a sharded run, the versions the store
// holds through the package name index (chunkstore.NamePrefix): one listing per name,
// never a listing of the whole store. The candidates carry only their store path; the
// chosen base's narinfo is read when its deltas are made (resolveBase).
func (p *Publisher) nameIndex(ctx context.Context, names map[string]bool) (map[string][]delta.NAR, error) {
	var mu sync.Mutex
	byName := map[string][]delta.NAR{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for pname := range names {
		if pname == "" {
			continue
		}
		g.Go(func() error {
			var nars []delta.NAR
			err := p.dst.Names(gctx, pname, func(base string) error {
				nars = append(nars, delta.NAR{StorePath: base})
				return nil
			})
			if err != nil {
				return fmt.Errorf("finding delta bases: %w", err)
			}
			mu.Lock()
			defer mu.Unlock()
			byName[pname] = nars
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return byName, nil
}

// resolveBase reads the narinfo of a base found in the name index, which gives its
// NarHash (for its manifest) and says that it is complete. A name entry without a
// narinfo is an interrupted publish's: no base.
func (p *Publisher) resolveBase(ctx context.Context, ref *baseRef) (bool, error) {
	if ref.nar.NarHash != ([32]byte{}) {
		return true, nil
	}
	hp := ref.nar.StorePath[strings.LastIndexByte(ref.nar.StorePath, '/')+1:][:32]
	raw, err := p.dst.NarInfo(ctx, hp)
	if errors.Is(err, shoal.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ni, err := nixcache.ParseNarInfo(raw)
	if err != nil || ni.HashPart() != hp {
		return false, nil
	}
	ref.nar = delta.NAR{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize}
	return true, nil
}
