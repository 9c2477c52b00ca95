package retire_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/chunkstore/retire"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

func TestRetire(t *testing.T) {
	ctx := context.Background()
	cache := cachetest.New(t, "test-1")
	add := func(name, compression string, seed uint64) *nixcache.NarInfo {
		return cache.Add(t, cachetest.HashPart(name), name, testkit.RandomBytes(seed, 60<<10), compression)
	}
	old := add("old", "xz", 1)         // published, old: retired
	kept := add("kept", "zstd", 2)     // published, on the keep list
	young := add("young", "zstd", 3)   // published, too young
	unpub := add("unpub", "zstd", 4)   // never published
	damaged := add("damaged", "xz", 5) // published, then a chunk lost
	storeDir := t.TempDir()
	src, _ := blob.Open(cache.Dir, nil)
	st, _ := chunkstore.Open(storeDir, nil)
	kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
	p, err := publish.New(nixcache.NewBinaryCache(src), st, kr, publish.Options{Params: chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(ctx, []string{old.HashPart(), kept.HashPart(), young.HashPart(), damaged.HashPart()}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	m, _, err := st.Manifest(ctx, damaged.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	// A chunk only the damaged NAR has (the NARs share nothing: different seeds).
	if err := st.Backend().Delete(ctx, chunkstore.ChunkKey(m.Entries[len(m.Entries)/2].ID)); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, ni := range []*nixcache.NarInfo{old, kept, unpub, damaged} {
		if err := os.Chtimes(filepath.Join(cache.Dir, ni.URL), now, now.Add(-100*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	opts := retire.Options{
		OlderThan: 30 * 24 * time.Hour,
		Keep:      func(hp string) bool { return hp == kept.HashPart() },
		Keys:      kr,
	}
	exists := func(ni *nixcache.NarInfo) bool {
		_, err := os.Stat(filepath.Join(cache.Dir, ni.URL))
		return err == nil
	}
	oldSize, _ := os.Stat(filepath.Join(cache.Dir, old.URL))

	rep, err := retire.Run(ctx, src, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := retire.Report{NarInfos: 5, Kept: 2, NotInStore: 1, Failed: 1, Retired: 1, FreedBytes: oldSize.Size()}
	if rep.NarInfos != want.NarInfos || rep.Kept != want.Kept || rep.NotInStore != want.NotInStore || rep.Failed != want.Failed || rep.Retired != want.Retired || rep.FreedBytes != want.FreedBytes {
		t.Fatalf("dry run report %+v, want %+v", rep, want)
	}
	for _, ni := range []*nixcache.NarInfo{old, kept, young, unpub, damaged} {
		if !exists(ni) {
			t.Fatalf("dry run deleted %s", ni.URL)
		}
	}
	if !strings.Contains(strings.Join(rep.Failures, "\n"), damaged.HashPart()) {
		t.Errorf("failures do not name the damaged path: %q", rep.Failures)
	}

	opts.Apply = true
	if rep, err = retire.Run(ctx, src, st, opts); err != nil || rep.Retired != 1 {
		t.Fatalf("apply: %+v, %v", rep, err)
	}
	if exists(old) {
		t.Error("the old, verified NAR is still in the cache")
	}
	for _, ni := range []*nixcache.NarInfo{kept, young, unpub, damaged} {
		if !exists(ni) {
			t.Errorf("%s was deleted", ni.StorePath)
		}
	}
	if _, err := os.Stat(filepath.Join(cache.Dir, old.HashPart()+".narinfo")); err != nil {
		t.Errorf("the narinfo must stay: %v", err)
	}
	// Again: the retired NAR is gone, nothing more to do.
	if rep, err = retire.Run(ctx, src, st, opts); err != nil || rep.Retired != 0 || rep.Gone != 1 {
		t.Fatalf("second apply: %+v, %v", rep, err)
	}
}

func TestRetireNeedsARule(t *testing.T) {
	kr, _ := nixcache.ParseKeyring([]string{nixcache.DefaultTrustedKey})
	b, _ := blob.Open(t.TempDir(), nil)
	if _, err := retire.Run(context.Background(), b, chunkstore.New(b), retire.Options{Keys: kr}); err == nil {
		t.Fatal("retire without a keep list or an age limit ran")
	}
}
