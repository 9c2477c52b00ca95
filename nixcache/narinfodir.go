package nixcache

import (
	"fmt"
	"os"
	"path/filepath"
)

// NarInfosInDir parses every narinfo of a binary cache directory, in file name order,
// for the tools that walk a local cache (load generators, sample-log makers). It
// checks no signature: callers that trust what they read verify it themselves.
func NarInfosInDir(dir string) ([]*NarInfo, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.narinfo"))
	if err != nil {
		return nil, fmt.Errorf("listing narinfos in %s: %w", dir, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no narinfo files in %s", dir)
	}
	out := make([]*NarInfo, 0, len(names))
	for _, name := range names {
		raw, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading narinfo: %w", err)
		}
		ni, err := ParseNarInfo(raw)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", name, err)
		}
		out = append(out, ni)
	}
	return out, nil
}
