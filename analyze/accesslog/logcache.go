package accesslog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/nixcache"
	"golang.org/x/sync/errgroup"
)

// KeepList names the NARs a retirement would leave in the main cache: by
// store path (hash part) or by NAR URL.
type KeepList struct {
	Name   string // for reports, e.g. the file's name
	hashes map[string]struct{}
	nars   map[string]struct{}
}

// ReadKeepList reads one entry a line: a store path hash part, a store path
// (/nix/store/<hash>-<name> or <hash>-<name>), a narinfo name
// (<hash>.narinfo) or a NAR URL (nar/<file>). Blank lines and lines
// starting with # are ignored. It is what `shoal store retire
// --keep-narinfos-from` reads, so one file can drive both.
func ReadKeepList(r io.Reader, name string) (*KeepList, error) {
	k := &KeepList{Name: name, hashes: map[string]struct{}{}, nars: map[string]struct{}{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.Index(line, "nar/"); i >= 0 && (i == 0 || line[i-1] == '/') {
			k.nars[line[i:]] = struct{}{}
			continue
		}
		hp, err := nixcache.ParseHashPart(strings.TrimSuffix(line, ".narinfo"))
		if err != nil {
			return nil, fmt.Errorf("%s line %d: want a store path, hash part, <hash>.narinfo or nar/ URL: %w", name, n, err)
		}
		k.hashes[hp] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return k, nil
}

// NeedsStorePaths reports whether some entries name store paths, which
// only the main cache's narinfos can map to NAR URLs.
func (k *KeepList) NeedsStorePaths() bool { return len(k.hashes) > 0 }

// Len is the number of entries.
func (k *KeepList) Len() int { return len(k.hashes) + len(k.nars) }

// Has reports whether the NAR at key, of storePath ("" if unknown), is kept.
func (k *KeepList) Has(key, storePath string) bool {
	if _, ok := k.nars[key]; ok {
		return true
	}
	if storePath == "" {
		return false
	}
	hp := strings.TrimPrefix(storePath, nixcache.StoreDir+"/")
	if len(hp) > 32 {
		hp = hp[:32]
	}
	_, ok := k.hashes[hp]
	return ok
}

// CacheResolver answers NarResolver from the main binary cache: NAR ages
// from Stat (file modification or S3 Last-Modified, i.e. upload time) and
// store paths from every narinfo of the cache. The narinfos are only used
// to name NARs, so their signatures are not checked.
type CacheResolver struct {
	Backend blob.Backend
	Jobs    int // concurrent requests to the cache
}

// Resolve stats the requested NARs, then lists and reads every narinfo to
// find the ones naming them: clients cache narinfos for a long time, so the
// logs need not show a NAR's narinfo request.
func (c CacheResolver) Resolve(ctx context.Context, keys []string) (map[string]NarFacts, error) {
	out := make(map[string]NarFacts, len(keys))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(c.Jobs, 1))
	for _, k := range keys {
		g.Go(func() error {
			if blob.ValidateKey(k) != nil {
				return nil // not a key this cache could hold
			}
			info, err := c.Backend.Stat(gctx, k)
			if errors.Is(err, shoal.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading the age of %s: %w", k, err)
			}
			mu.Lock()
			out[k] = NarFacts{Modified: info.ModTime}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	cache := nixcache.NewBinaryCache(c.Backend)
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(max(c.Jobs, 1))
	var read, broken int
	err := cache.List(gctx, func(hp string) error {
		g.Go(func() error {
			ni, err := cache.NarInfo(gctx, hp)
			mu.Lock()
			defer mu.Unlock()
			read++
			if read%10000 == 0 {
				slog.Info("reading narinfos", "read", read)
			}
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				// One bad narinfo must not stop an analysis of the rest.
				broken++
				if broken <= 5 {
					slog.Warn("skipping narinfo", "err", err)
				}
				return nil
			}
			if f, ok := out[ni.URL]; ok && f.StorePath == "" {
				f.StorePath = ni.StorePath
				out[ni.URL] = f
			}
			return nil
		})
		return nil
	})
	if werr := g.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return nil, fmt.Errorf("mapping NARs to store paths: %w", err)
	}
	if broken > 0 {
		slog.Warn("narinfos could not be read", "count", broken, "of", read)
	}
	return out, nil
}
