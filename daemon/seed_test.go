package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/internal/nixtest"
	"github.com/shoal-nix/shoal/nixstore"
)

// newSeedFixture is two versions of a package in the local /nix/store, both signed,
// in an xz cache and published to a chunk store. Each run makes fresh paths: the test
// modifies version 1 in place.
func newSeedFixture(t *testing.T) *fixture {
	env := nixtest.NewEnv(t)
	f := &fixture{env: env, paths: map[string]string{}, cacheDir: t.TempDir(), storeDir: t.TempDir()}
	f.sk, f.pk = env.GenerateKey(t, "shoal-seed-test-1")
	// A package name of its own, so that versions left in /nix/store by earlier runs
	// are no candidates.
	seed := time.Now().UnixNano()
	pname := fmt.Sprintf("seed%x", seed)
	f.paths["seeddemo-1.0"] = env.AddPath(t, pname+"-1.0", nixtest.PackageVersion(seed, 1, 3<<20))
	f.paths["seeddemo-1.1"] = env.AddPath(t, pname+"-1.1", nixtest.PackageVersion(seed, 2, 3<<20))
	env.Sign(t, f.sk, f.all()...)
	env.CopyToCache(t, f.cacheDir, "xz", f.all()...)
	f.publish(t, f.pk)
	f.upstream = newCountingServer(t, f.cacheDir)
	f.store = newCountingServer(t, f.storeDir)
	return f
}

// TestUpgradeSeededFromLocalStore fetches version 2 through a daemon whose chunk cache
// is empty while version 1 is in /nix/store: only the chunks version 1 lacks cross the
// wire. Then version 1 is modified in place after being indexed, and a fresh daemon
// catches the chunks that no longer match and fetches them from the store.
func TestUpgradeSeededFromLocalStore(t *testing.T) {
	f := newSeedFixture(t)
	v1, v2 := f.narInfo(t, "seeddemo-1.0"), f.narInfo(t, "seeddemo-1.1")
	m1, m2 := readManifest(t, f.storeDir, v1.NarHash), readManifest(t, f.storeDir, v2.NarHash)
	inV1 := map[chunk.ID]bool{}
	for _, e := range m1.Entries {
		inV1[e.ID] = true
	}
	var newBytes int64
	seen := map[chunk.ID]bool{}
	for _, e := range m2.Entries {
		if !inV1[e.ID] && !seen[e.ID] {
			seen[e.ID] = true
			newBytes += int64(e.StoredSize)
		}
	}
	if len(seen) == 0 || len(seen) == len(m2.Entries) {
		t.Fatalf("fixture does not exercise seeding: %d of %d chunks new", len(seen), len(m2.Entries))
	}
	cfg := daemon.Config{StoreURL: f.store.URL, Upstreams: []string{f.upstream.URL}, TrustedKeys: []string{f.pk}, SeedStore: "/nix/store", SeedRelated: 3}

	d, url := startDaemon(t, cfg)
	f.copyAndVerify(t, url, "seeddemo-1.1")
	got := f.store.sent("chunks") + f.upstream.sent("nar")
	t.Logf("seeded upgrade: %d bytes over the wire (manifest %d); new chunks %d bytes; xz NAR %d bytes; %d bytes from the local store",
		got, f.store.sent("manifests"), newBytes, v2.FileSize, d.Metrics().Bytes(nixstore.SourceName))
	if f.upstream.sent("nar") != 0 {
		t.Errorf("the whole NAR was fetched (%d bytes) although version 1 is in the local store", f.upstream.sent("nar"))
	}
	if got != newBytes {
		t.Errorf("seeded upgrade fetched %d chunk bytes, want exactly the new chunks' %d", got, newBytes)
	}
	if d.Metrics().Bytes(nixstore.SourceName) == 0 {
		t.Error("no bytes counted from the local store")
	}

	// A fresh daemon indexes version 1, which is then modified behind its back.
	d2, url2 := startDaemon(t, cfg)
	reply, err := d2.Seed(context.Background(), []string{f.paths["seeddemo-1.0"], "/nix/store/00000000000000000000000000000000-absent-1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if r := reply.Results; len(r) != 2 || !r[0].Indexed || r[0].Error != "" || r[1].Error == "" {
		t.Fatalf("Seed = %+v; want the first path indexed and the absent one refused", r)
	}
	lib := filepath.Join(f.paths["seeddemo-1.0"], "lib", "libdemo.so")
	orig, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(lib, orig, 0o444); err != nil {
			t.Errorf("restoring %s: %v", lib, err)
		}
	})
	bad := bytes.Clone(orig)
	for i := range bad {
		if i%(256<<10) < 64 { // a few bytes in every chunk's stretch of the file
			bad[i] ^= 0x55
		}
	}
	if err := os.WriteFile(lib, bad, 0o444); err != nil {
		t.Fatal(err)
	}
	before := f.store.sent("chunks")
	f.copyAndVerify(t, url2, "seeddemo-1.1")
	refetched := f.store.sent("chunks") - before
	t.Logf("after modifying version 1: %d chunk bytes from the store (new chunks alone: %d)", refetched, newBytes)
	if refetched <= newBytes {
		t.Errorf("fetched %d chunk bytes from the store; the modified chunks (beyond the new %d) should have come from there", refetched, newBytes)
	}
	if f.upstream.sent("nar") != 0 {
		t.Errorf("the whole NAR was fetched (%d bytes)", f.upstream.sent("nar"))
	}
	if d2.Metrics().Bytes(nixstore.SourceName) == 0 {
		t.Error("no unmodified chunk was taken from the local store")
	}
}
