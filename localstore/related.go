package localstore

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SplitName splits a store path's name (without the hash) as Nix's DrvName does: the
// name ends at the first "-" followed by a character that is not a letter, and the
// rest is the version. "go-1.26.3" is "go", "1.26.3"; "hello" has no version.
func SplitName(name string) (pname, version string) {
	for i := 0; i+1 < len(name); i++ {
		if name[i] == '-' {
			c := name[i+1]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
				return name[:i], name[i+1:]
			}
		}
	}
	return name, ""
}

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
		p, _ := SplitName(baseName(n))
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
	pname, version := SplitName(baseName(filepath.Base(storePath)))
	if version == "" || max <= 0 {
		return nil, nil
	}
	paths, err := s.byName(pname)
	if err != nil {
		return nil, err
	}
	_, suffix := splitOutput(version)
	var cands []string
	for _, p := range paths {
		if p == storePath {
			continue
		}
		_, v := SplitName(baseName(filepath.Base(p)))
		if _, suf := splitOutput(v); v == "" || v == version || suf != suffix {
			continue
		}
		cands = append(cands, p)
	}
	ver := func(p string) string {
		_, v := SplitName(baseName(filepath.Base(p)))
		v, _ = splitOutput(v)
		return v
	}
	slices.SortStableFunc(cands, func(a, b string) int { return -CompareVersions(ver(a), ver(b)) })
	return cands[:min(len(cands), max)], nil
}

// splitOutput separates a version from an output suffix: "1.2-dev" is "1.2", "dev".
func splitOutput(version string) (ver, suffix string) {
	if i := strings.LastIndexByte(version, '-'); i >= 0 {
		s := version[i+1:]
		if s != "" && !('0' <= s[0] && s[0] <= '9') {
			return version[:i], s
		}
	}
	return version, ""
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

// CompareVersions orders versions as Nix's compareVersions does: both are split into
// components at "." and "-" and between digit and non-digit runs; numbers compare as
// numbers, a number is newer than a word, "pre" is older than anything, and words
// compare as strings; a missing component is older than any present one except "pre".
func CompareVersions(a, b string) int {
	for a != "" || b != "" {
		var ca, cb string
		ca, a = nextComponent(a)
		cb, b = nextComponent(b)
		if c := compareComponent(ca, cb); c != 0 {
			return c
		}
	}
	return 0
}

func nextComponent(s string) (comp, rest string) {
	for s != "" && (s[0] == '.' || s[0] == '-') {
		s = s[1:]
	}
	if s == "" {
		return "", ""
	}
	digit := func(c byte) bool { return '0' <= c && c <= '9' }
	i := 1
	if digit(s[0]) {
		for i < len(s) && digit(s[i]) {
			i++
		}
	} else {
		for i < len(s) && !digit(s[i]) && s[i] != '.' && s[i] != '-' {
			i++
		}
	}
	return s[:i], s[i:]
}

func compareComponent(a, b string) int {
	if a == b {
		return 0
	}
	num := func(s string) bool { return s != "" && '0' <= s[0] && s[0] <= '9' }
	switch {
	case num(a) && num(b):
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			return cmp.Compare(len(a), len(b))
		}
		return strings.Compare(a, b)
	case a == "" && num(b):
		return -1
	case num(a) && b == "":
		return 1
	case a == "pre":
		return -1
	case b == "pre":
		return 1
	case b == "":
		return 1
	case a == "":
		return -1
	case num(b):
		return -1
	case num(a):
		return 1
	default:
		return strings.Compare(a, b)
	}
}
