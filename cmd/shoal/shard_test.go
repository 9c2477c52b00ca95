package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// Two workers, one given full store paths (shared out before any narinfo is read),
// the other bare hashes, publish disjoint halves that together are the whole cache;
// store migrate then turns a layout 1 store into layout 3 that verify accepts.
func TestPublishShardAndMigrateCLI(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	var nis []*nixcache.NarInfo
	for i := range 6 {
		nis = append(nis, cache.Add(t, cachetest.HashPart(fmt.Sprint("p", i)), fmt.Sprintf("pkg%d-1.0", i), testkit.RandomBytes(uint64(i+1), 40<<10), "none"))
	}
	storeDir := filepath.Join(t.TempDir(), "store")
	published := func() map[string]bool {
		got := map[string]bool{}
		for _, ni := range nis {
			if _, err := os.Stat(filepath.Join(storeDir, ni.HashPart()+".narinfo")); err == nil {
				got[ni.HashPart()] = true
			}
		}
		return got
	}
	var paths, hashes []string
	for _, ni := range nis {
		paths = append(paths, ni.StorePath)
		hashes = append(hashes, ni.HashPart())
	}
	base := []string{"--log-level", "error", "publish", "--from", "file://" + cache.Dir, "--to", storeDir, "--trusted-public-key", cache.PublicKey}
	for i, args := range [][]string{paths, hashes} {
		before := len(published())
		code, _, errOut := runCLI(t, append(append(base, "--shard", fmt.Sprint(i, "/2")), args...)...)
		if code != 0 {
			t.Fatalf("publish --shard %d/2: exit %d, %s", i, code, errOut)
		}
		got := published()
		for _, ni := range nis {
			if publish.ShardOf(ni.StorePath, 2) == i && !got[ni.HashPart()] {
				t.Errorf("shard %d/2 did not publish %s", i, ni.StorePath)
			}
		}
		mine := len(got) - before
		if mine == 0 || mine == len(nis) || !strings.Contains(errOut, fmt.Sprintf("published %d NARs", mine)) {
			t.Errorf("shard %d/2 published %d of %d NARs:\n%s", i, mine, len(nis), errOut)
		}
		if i == 1 && !strings.Contains(errOut, fmt.Sprintf("left %d store paths to other shards", len(nis)-mine)) {
			t.Errorf("shard 1/2 given bare hashes does not say how many it left:\n%s", errOut)
		}
	}
	if len(published()) != len(nis) {
		t.Fatalf("the two shards published %d of %d NARs", len(published()), len(nis))
	}
	if code, _, errOut := runCLI(t, "publish", "--shard", "2/2", "--from", cache.Dir, "--to", storeDir, "--all"); code != 2 || !strings.Contains(errOut, "--shard") {
		t.Errorf("--shard 2/2: exit %d, %s", code, errOut)
	}

	code, out, errOut := runCLI(t, "--log-level", "error", "store", "migrate", "--store", storeDir)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("migrated %d of %d manifests", len(nis), len(nis))) || !strings.Contains(out, "store layout:  3") {
		t.Fatalf("store migrate: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runCLI(t, "--log-level", "error", "store", "verify", "--store", storeDir); code != 0 || !strings.Contains(out, " 0 problems") {
		t.Fatalf("store verify after migrate: exit %d\n%s%s", code, out, errOut)
	}
}
