package nixstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shoal-nix/shoal/nixname"
)

// baseName returns the part of a store path's base name after the hash.
func baseName(base string) string {
	if _, name, ok := strings.Cut(base, "-"); ok {
		return name
	}
	return base
}

// storeListing is the store directory's entries by package name, reused while the
// directory's modification time (which every added or removed path changes) stays
// the same: listing a large store on every NAR request would cost more than indexing.
type storeListing struct {
	mtime  time.Time
	byName map[string][]string
}

func (s *Store) byName(pname string) ([]string, error) {
	fi, err := os.Stat(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s.dir, err)
	}
	s.mu.Lock()
	if s.listing.byName != nil && s.listing.mtime.Equal(fi.ModTime()) {
		paths := s.listing.byName[pname]
		s.mu.Unlock()
		return paths, nil
	}
	s.mu.Unlock()
	f, err := os.Open(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s.dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s.dir, err)
	}
	by := make(map[string][]string)
	for _, n := range names {
		if len(n) < 34 || n[32] != '-' || strings.HasSuffix(n, ".drv") || strings.HasSuffix(n, ".lock") || strings.HasSuffix(n, ".chroot") {
			continue
		}
		p, _ := nixname.Split(baseName(n))
		by[p] = append(by[p], filepath.Join(s.dir, n))
	}
	s.mu.Lock()
	s.listing = storeListing{mtime: fi.ModTime(), byName: by}
	s.mu.Unlock()
	return by[pname], nil
}

// Related returns up to max store paths with storePath's package name and output
// suffix ("-dev", "-doc", "-src": other outputs hold other files) but another version,
// highest version first, so an upgrade draws on the newest version installed. Nix sets every store path's mtime to 1, so versions, not times,
// say which is newest.
func (s *Store) Related(storePath string, max int) ([]string, error) {
	pname, version := nixname.Split(baseName(filepath.Base(storePath)))
	if version == "" || max <= 0 {
		return nil, nil
	}
	paths, err := s.byName(pname)
	if err != nil {
		return nil, err
	}
	_, suffix := nixname.SplitOutput(version)
	var cands []string
	for _, p := range paths {
		if p == storePath {
			continue
		}
		_, v := nixname.Split(baseName(filepath.Base(p)))
		if _, suf := nixname.SplitOutput(v); v == "" || v == version || suf != suffix {
			continue
		}
		cands = append(cands, p)
	}
	ver := func(p string) string {
		_, v := nixname.Split(baseName(filepath.Base(p)))
		v, _ = nixname.SplitOutput(v)
		return v
	}
	slices.SortStableFunc(cands, func(a, b string) int { return -nixname.CompareVersions(ver(a), ver(b)) })
	return cands[:min(len(cands), max)], nil
}

// SeedRelated indexes the paths Related returns for storePath and reports how many of
// them are indexed now; paths that fail (no longer valid, modified) are logged and
// skipped, since seeding only ever saves downloads.
func (s *Store) SeedRelated(ctx context.Context, storePath string, max int) int {
	paths, err := s.Related(storePath, max)
	if err != nil {
		s.log.Warn("finding other versions in the local store", "path", storePath, "err", err)
		return 0
	}
	n := 0
	for _, p := range paths {
		if _, err := s.Seed(ctx, p); err != nil {
			s.log.Info("not seeding from local store path", "path", p, "err", err)
			continue
		}
		n++
	}
	return n
}

// AnySeeded reports whether another version of storePath's package (as Related finds
// them) is indexed already.
func (s *Store) AnySeeded(storePath string) bool {
	paths, err := s.Related(storePath, 1<<20)
	if err != nil {
		return false
	}
	for _, p := range paths {
		if _, err := s.cache.Seeded(p); err == nil {
			return true
		}
	}
	return false
}
