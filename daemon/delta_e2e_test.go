package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/daemon"
	"github.com/shoal-nix/shoal/fetch"
	"github.com/shoal-nix/shoal/internal/deltatest"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixstore"
)

// addDeltas rewrites the newer version's manifest in the fixture's store as version 2,
// with deltas against the older version, and returns it with the full-object bytes of
// the chunks the older version lacks (what an upgrade costs without deltas).
func (f *fixture) addDeltas(t *testing.T, older, newer string) (*manifest.Manifest, int64) {
	t.Helper()
	st, err := chunkstore.Open(f.storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := f.narInfo(t, older), f.narInfo(t, newer)
	res, err := deltatest.AddDeltas(context.Background(), st, v1.NarHash, v2.NarHash, deltatest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m1 := readManifest(t, f.storeDir, v1.NarHash)
	inV1 := map[chunk.ID]bool{}
	for _, e := range m1.Entries {
		inV1[e.ID] = true
	}
	var newBytes int64
	seen := map[chunk.ID]bool{}
	for _, e := range res.Manifest.Entries {
		if !inV1[e.ID] && !seen[e.ID] {
			seen[e.ID] = true
			newBytes += int64(e.StoredSize)
		}
	}
	t.Logf("%s: %d of %d chunks new (%d bytes as full objects); %d deltas of %d bytes replace %d bytes of them",
		newer, len(seen), len(res.Manifest.Entries), newBytes, res.Deltas, res.DeltaBytes, res.FullBytes)
	if res.Deltas == 0 || len(seen) == 0 {
		t.Fatalf("fixture does not exercise deltas")
	}
	return res.Manifest, newBytes
}

// upgradeBytes is what the store sent for an upgrade: chunks, deltas and the manifest.
func (f *fixture) storeBytes() int64 {
	return f.store.sent("chunks") + f.store.sent("deltas") + f.store.sent("manifests")
}

// TestUpgradeFetchesDeltas substitutes version 1 through the daemon, so its chunks are
// in the daemon's cache, then version 2, whose manifest offers deltas against version
// 1: the store sends deltas, fewer bytes than the new chunks, and Nix accepts the path.
// A second daemon then meets broken deltas (garbage, and deltas made against other
// bases) and falls back to the full chunks, still producing the right NAR.
func TestUpgradeFetchesDeltas(t *testing.T) {
	f := newFixture(t)
	m2, newBytes := f.addDeltas(t, "demo-1.0", "demo-1.1")
	cfg := daemon.Config{StoreURL: f.store.URL, Upstreams: []string{f.upstream.URL}, TrustedKeys: []string{f.pk}}
	d, url := startDaemon(t, cfg)
	f.copyAndVerify(t, url, "demo-1.0")

	before, beforeNar := f.storeBytes(), f.upstream.sent("nar")
	beforeDeltas := f.store.sent("deltas")
	f.copyAndVerify(t, url, "demo-1.1")
	upgrade := f.storeBytes() - before + f.upstream.sent("nar") - beforeNar
	deltas := f.store.sent("deltas") - beforeDeltas
	t.Logf("upgrade with the base in the cache: %d bytes over the wire (%d of them deltas); new chunks %d bytes; xz NAR %d bytes",
		upgrade, deltas, newBytes, f.narInfo(t, "demo-1.1").FileSize)
	if deltas == 0 || d.Metrics().Bytes("store"+fetch.DeltaSuffix) != deltas {
		t.Errorf("store sent %d delta bytes, metrics counted %d; want the same, non-zero", deltas, d.Metrics().Bytes("store"+fetch.DeltaSuffix))
	}
	if upgrade >= newBytes {
		t.Errorf("upgrade cost %d bytes, not less than the new chunks' %d", upgrade, newBytes)
	}
	if n := d.Metrics().Events(fetch.EventDeltaFailed); n != 0 {
		t.Errorf("%d deltas failed against a correct store", n)
	}

	// Break every delta: half are garbage, half decode against the real bases to other
	// bytes. A fresh daemon with version 1 in its cache must fall back to full chunks.
	breakDeltas(t, f.storeDir, m2)
	d2, url2 := startDaemon(t, cfg)
	f.copyAndVerify(t, url2, "demo-1.0")
	beforeChunks := f.store.sent("chunks")
	f.copyAndVerify(t, url2, "demo-1.1")
	full := f.store.sent("chunks") - beforeChunks
	failed := d2.Metrics().Events(fetch.EventDeltaFailed)
	t.Logf("broken deltas: %d failed, %d full chunk bytes fetched instead", failed, full)
	if failed == 0 {
		t.Error("no delta failure counted")
	}
	if full != newBytes {
		t.Errorf("fetched %d full chunk bytes after the deltas failed, want the new chunks' %d", full, newBytes)
	}
}

// breakDeltas replaces m's delta objects in the store: even entries' with bytes that
// are no zstd frame, odd ones' with a delta of the right chunk against a dictionary
// shifted by a byte, which decodes against the real bases to other bytes.
func breakDeltas(t *testing.T, storeDir string, m *manifest.Manifest) {
	t.Helper()
	ctx := context.Background()
	st, err := chunkstore.Open(storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := chunk.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	dc := chunk.NewDeltaCodec(0, 1)
	defer dc.Close()
	raw := func(id chunk.ID, size uint32) []byte {
		obj, err := st.Chunk(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		b, err := codec.Open(nil, id, obj, int(size))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	n := 0
	for i, e := range m.Entries {
		bases, id, _, ok := m.DeltaOf(i)
		if !ok {
			continue
		}
		obj := []byte("not a delta")
		if n%2 == 1 {
			dict := []byte{'x'}
			for _, b := range bases {
				dict = append(dict, raw(b.ID, b.Size)...)
			}
			if obj, err = dc.EncodeDelta(nil, raw(e.ID, e.Size), dict[:len(dict)-1]); err != nil {
				t.Fatal(err)
			}
		}
		n++
		p := filepath.Join(storeDir, filepath.FromSlash(chunkstore.DeltaKey(id)))
		if err := os.WriteFile(p, obj, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSeededUpgradeFetchesDeltas has version 1 only in /nix/store (built there, never
// substituted through shoal) and a daemon with an empty cache: the daemon indexes
// version 1 in place, prices version 2 with its deltas, and builds each dictionary
// from version 1's files.
func TestSeededUpgradeFetchesDeltas(t *testing.T) {
	f := newSeedFixture(t)
	_, newBytes := f.addDeltas(t, "seeddemo-1.0", "seeddemo-1.1")
	d, url := startDaemon(t, daemon.Config{StoreURL: f.store.URL, Upstreams: []string{f.upstream.URL}, TrustedKeys: []string{f.pk},
		SeedStore: "/nix/store", SeedRelated: 3})
	f.copyAndVerify(t, url, "seeddemo-1.1")
	got := f.storeBytes() + f.upstream.sent("nar")
	deltas := f.store.sent("deltas")
	t.Logf("upgrade with the base only in /nix/store: %d bytes over the wire (%d of them deltas); new chunks %d bytes; xz NAR %d bytes; %d bytes read from /nix/store",
		got, deltas, newBytes, f.narInfo(t, "seeddemo-1.1").FileSize, d.Metrics().Bytes(nixstore.SourceName))
	if f.upstream.sent("nar") != 0 {
		t.Errorf("the whole NAR was fetched although version 1 is in /nix/store")
	}
	if deltas == 0 {
		t.Error("no delta was fetched")
	}
	if got >= newBytes {
		t.Errorf("upgrade cost %d bytes, not less than the new chunks' %d", got, newBytes)
	}
	if n := d.Metrics().Events(fetch.EventDeltaFailed); n != 0 {
		t.Errorf("%d deltas failed against a correct store", n)
	}
}
