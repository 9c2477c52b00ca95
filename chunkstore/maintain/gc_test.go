package maintain

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/s3test"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

var smallParams = chunk.Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}

// version returns a "package version": shared with the previous version except
// for a fresh middle part, so consecutive versions share most chunks.
func version(seed uint64, v int) []byte {
	base := testkit.RandomBytes(seed, 120<<10)
	fresh := testkit.RandomBytes(seed*1000+uint64(v), 30<<10)
	return slices.Concat(base[:60<<10], fresh, base[60<<10:])
}

// stores returns a fresh store URL per backend: a directory, and a bucket on MinIO.
func stores(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"file": func(t *testing.T) string { return t.TempDir() },
		"s3": func(t *testing.T) string {
			srv := s3test.Start(t)
			return srv.URL(srv.Bucket(t, "gc-store"), "store")
		},
	}
}

type fixture struct {
	cache *cachetest.Cache
	store *chunkstore.Store
	nis   map[string]*nixcache.NarInfo
}

func newFixture(t *testing.T, storeURL string) *fixture {
	s, err := chunkstore.Open(storeURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{cache: cachetest.New(t, "gc-test-1"), store: s, nis: map[string]*nixcache.NarInfo{}}
}

func (f *fixture) add(t *testing.T, name string, nar []byte) string {
	hp := cachetest.HashPart(name)
	f.nis[hp] = f.cache.Add(t, hp, name, nar, "zstd")
	return hp
}

func (f *fixture) publish(t *testing.T, hps ...string) publish.Summary {
	t.Helper()
	return f.publishWith(t, publish.Options{Params: smallParams, Jobs: 2}, hps...)
}

// publishWith publishes hps from the fixture's cache into its store with opts.
func (f *fixture) publishWith(t *testing.T, opts publish.Options, hps ...string) publish.Summary {
	t.Helper()
	src, err := blob.Open(f.cache.Dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := nixcache.ParseKeyring([]string{f.cache.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	p, err := publish.New(nixcache.NewBinaryCache(src), f.store, kr, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sum, err := p.Run(context.Background(), hps)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func (f *fixture) chunksOf(t *testing.T, hp string) []chunk.ID {
	t.Helper()
	m, _, err := f.store.Manifest(context.Background(), f.nis[hp].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]chunk.ID, len(m.Entries))
	for i, e := range m.Entries {
		ids[i] = e.ID
	}
	return ids
}

// complete fails unless hp's narinfo, manifest and every chunk are in the store.
func (f *fixture) complete(t *testing.T, hp string) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.store.NarInfo(ctx, hp); err != nil {
		t.Fatalf("%s: %v", hp, err)
	}
	for _, id := range f.chunksOf(t, hp) {
		if ok, err := f.store.HasChunk(ctx, id); !ok || err != nil {
			t.Fatalf("%s: chunk %s missing (%v)", hp, id, err)
		}
	}
}

func (f *fixture) verify(t *testing.T) {
	t.Helper()
	rep, problems, err := Verify(context.Background(), f.store, VerifyOptions{})
	if err != nil || problems > 0 {
		t.Fatalf("verify: %v, %d problems: %q", err, problems, rep.Problems)
	}
}

// waitOlder sleeps until everything written so far is older than grace (S3 keeps
// times to the second, and gc allows for that).
func waitOlder(grace time.Duration) { time.Sleep(grace + 2100*time.Millisecond) }

func TestCollect(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			v1 := f.add(t, "pkg-1", version(7, 1))
			v2 := f.add(t, "pkg-2", version(7, 2))
			v3 := f.add(t, "pkg-3", version(7, 3))
			other := f.add(t, "other-1", testkit.RandomBytes(99, 80<<10))
			f.publish(t, v1, v2, v3, other)
			const grace = time.Second
			waitOlder(grace)

			kept := map[chunk.ID]bool{}
			for _, hp := range []string{v3, other} {
				for _, id := range f.chunksOf(t, hp) {
					kept[id] = true
				}
			}
			var unique []chunk.ID // chunks only the dropped versions had
			for _, hp := range []string{v1, v2} {
				for _, id := range f.chunksOf(t, hp) {
					if !kept[id] && !slices.Contains(unique, id) {
						unique = append(unique, id)
					}
				}
			}
			if len(unique) == 0 {
				t.Fatal("test corpus has no chunks unique to the old versions")
			}
			keep := func(hp string) bool { return hp == v3 || hp == other }

			dry, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if dry.NarInfos.Deleted != 2 || dry.Manifests.Deleted != 2 || dry.Chunks.Deleted != int64(len(unique)) || dry.NarURLs.Deleted != 2 {
				t.Fatalf("dry run: %+v, want 2 narinfos, 2 manifests, %d chunks, 2 index entries", dry, len(unique))
			}
			f.complete(t, v1) // the dry run deleted nothing

			rep, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace})
			if err != nil {
				t.Fatal(err)
			}
			if rep.FreedObjects() != dry.FreedObjects() || rep.FreedBytes() != dry.FreedBytes() || rep.FreedBytes() == 0 {
				t.Errorf("gc freed %d objects, %d bytes; the dry run said %d, %d", rep.FreedObjects(), rep.FreedBytes(), dry.FreedObjects(), dry.FreedBytes())
			}
			f.complete(t, v3)
			f.complete(t, other)
			for _, hp := range []string{v1, v2} {
				if _, err := f.store.NarInfo(ctx, hp); !errors.Is(err, shoal.ErrNotFound) {
					t.Errorf("dropped narinfo %s: %v", hp, err)
				}
				if ok, _ := f.store.HasManifest(ctx, f.nis[hp].NarHash); ok {
					t.Errorf("manifest of dropped %s survived", hp)
				}
				if ok, err := f.store.HasNarURL(ctx, f.nis[hp].URL); ok || err != nil {
					t.Errorf("NAR URL index entry of dropped %s survived (%v)", hp, err)
				}
			}
			for _, hp := range []string{v3, other} {
				if names, err := f.store.NarURL(ctx, f.nis[hp].URL); err != nil || names != hp {
					t.Errorf("NAR URL index entry of kept %s: %q, %v", hp, names, err)
				}
			}
			for _, id := range unique {
				if ok, _ := f.store.HasChunk(ctx, id); ok {
					t.Errorf("chunk %s unique to dropped versions survived", id)
				}
			}
			f.verify(t)

			again, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace})
			if err != nil || again.FreedObjects() != 0 {
				t.Errorf("second gc: %+v, %v; want nothing to free", again, err)
			}
			// The dropped versions can be published again, whole.
			f.publish(t, v1)
			f.complete(t, v1)
		})
	}
}

func TestCollectKeepSinceAndGrace(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	old := f.add(t, "pkg-1", version(3, 1))
	f.publish(t, old)
	waitOlder(time.Second)
	young := f.add(t, "pkg-2", version(3, 2))
	f.publish(t, young)

	// keep-since covers only the young narinfo.
	rep, err := Collect(ctx, f.store, Options{KeepSince: time.Second, Grace: 0})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NarInfos.Deleted != 1 || rep.NarInfos.Kept != 1 {
		t.Errorf("keep-since: %+v", rep.NarInfos)
	}
	f.complete(t, young)

	// Grace spares everything: nothing named to keep, yet nothing young goes.
	f2 := newFixture(t, t.TempDir())
	hp := f2.add(t, "pkg-1", version(4, 1))
	f2.publish(t, hp)
	rep, err = Collect(ctx, f2.store, Options{Keep: func(string) bool { return false }, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if rep.FreedObjects() != 0 || rep.Young == 0 {
		t.Errorf("grace: %+v", rep)
	}
	f2.complete(t, hp)
}

func TestCollectRefusals(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	hp := f.add(t, "pkg-1", version(5, 1))
	f.publish(t, hp)
	waitOlder(0)
	tests := []struct {
		name  string
		setup func(t *testing.T)
		opts  Options
		want  string
	}{
		{name: "nothing kept", opts: Options{}, want: "nothing to keep"},
		{name: "negative grace", opts: Options{KeepSince: time.Hour, Grace: -1}, want: "negative grace"},
		{
			name: "kept narinfo unparsable",
			setup: func(t *testing.T) {
				if err := f.store.Backend().Put(ctx, chunkstore.NarInfoKey(hp), []byte("garbage\n")); err != nil {
					t.Fatal(err)
				}
			},
			opts: Options{Keep: func(string) bool { return true }},
			want: "parsing kept narinfo",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			_, err := Collect(ctx, f.store, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Collect = %v, want error containing %q", err, tt.want)
			}
			// Nothing was lost.
			for _, id := range f.chunksOf(t, hp) {
				if ok, _ := f.store.HasChunk(ctx, id); !ok {
					t.Fatalf("chunk %s deleted by a refused gc", id)
				}
			}
		})
	}
	if _, err := Collect(ctx, chunkstore.New(mustOpen(t, t.TempDir())), Options{KeepSince: time.Hour}); err == nil {
		t.Error("gc of a directory that is no store succeeded")
	}
}

func mustOpen(t *testing.T, u string) blob.Backend {
	b, err := blob.Open(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCollectSparesChunksReusedDuringGC publishes, between gc's mark and its sweep, a
// NAR that reuses chunks only dropped narinfos referred to: the publish refreshes
// them, gc's second look sees them young, and the new NAR stays complete.
func TestCollectSparesChunksReusedDuringGC(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			dropped := f.add(t, "pkg-1", version(11, 1))
			f.publish(t, dropped)
			const grace = time.Second
			waitOlder(grace)
			// Same bytes under another store path: every chunk is reused.
			reuser := f.add(t, "pkg-1-copy", version(11, 1))
			var sum publish.Summary
			rep, err := Collect(ctx, f.store, Options{
				Keep:        func(hp string) bool { return hp == reuser },
				Grace:       grace,
				beforeSweep: func() { sum = f.publish(t, reuser) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if sum.NARs != 1 || sum.NewChunks != 0 {
				t.Fatalf("publish during gc: %+v, want one NAR reusing every chunk", sum)
			}
			if rep.Chunks.Deleted != 0 || rep.NarInfos.Deleted != 1 {
				t.Errorf("gc: %+v; want the dropped narinfo deleted and every reused chunk spared", rep)
			}
			f.complete(t, reuser)
			f.verify(t)
		})
	}
}

// TestCollectConcurrentWithPublish runs collections in a loop while new versions are
// published, then checks every published version is complete.
func TestCollectConcurrentWithPublish(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			var hps []string
			for v := range 8 {
				hps = append(hps, f.add(t, fmt.Sprintf("pkg-%d", v), version(21, v)))
			}
			f.publish(t, hps[:2]...)
			const grace = time.Second
			waitOlder(grace)
			var mu sync.Mutex
			published := map[string]bool{}
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(done)
				for _, hp := range hps[2:] {
					f.publish(t, hp)
					mu.Lock()
					published[hp] = true
					mu.Unlock()
				}
			}()
			runs := 0
			for stop := false; !stop; runs++ {
				select {
				case <-done:
					stop = true
				default:
				}
				_, err := Collect(ctx, f.store, Options{
					// Keep only what was published in this loop: the first two versions
					// go, and with them the chunks the later ones do not share.
					Keep: func(hp string) bool {
						mu.Lock()
						defer mu.Unlock()
						return published[hp]
					},
					Grace: grace,
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			wg.Wait()
			for _, hp := range hps[2:] {
				f.complete(t, hp)
			}
			f.verify(t)
			t.Logf("%d collections ran during the publishes", runs)
		})
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	a := f.add(t, "pkg-1", version(31, 1))
	b := f.add(t, "pkg-2", testkit.RandomBytes(32, 60<<10))
	f.publish(t, a, b)
	f.verify(t)
	ids := f.chunksOf(t, a)
	be := f.store.Backend()
	// A chunk whose bytes are another chunk's, a missing chunk, a missing manifest.
	other, err := f.store.Chunk(ctx, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Put(ctx, chunkstore.ChunkKey(ids[0]), other); err != nil {
		t.Fatal(err)
	}
	bIDs := f.chunksOf(t, b)
	if err := be.Delete(ctx, chunkstore.ChunkKey(bIDs[len(bIDs)-1])); err != nil {
		t.Fatal(err)
	}
	if err := be.Delete(ctx, chunkstore.ManifestKey(manifest.Key(f.nis[a].NarHash))); err != nil {
		t.Fatal(err)
	}
	rep, problems, err := Verify(ctx, f.store, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(rep.Problems, "\n")
	for _, want := range []string{"chunk " + ids[0].String() + ": ", "is missing", "its manifest " + manifest.Key(f.nis[a].NarHash) + " is missing"} {
		if !strings.Contains(joined, want) {
			t.Errorf("problems lack %q:\n%s", want, joined)
		}
	}
	if problems != 3 {
		t.Errorf("%d problems, want 3:\n%s", problems, joined)
	}
	// A sample checks no more than asked.
	rep, _, err = Verify(ctx, f.store, VerifyOptions{Sample: 2})
	if err != nil || rep.Chunks != 2 || rep.Manifests != 1 || rep.NarInfos != 2 {
		t.Errorf("sample 2: %+v, %v", rep, err)
	}
}

// TestPublishToS3WithFaults publishes through a proxy that throttles, fails and cuts
// connections: the client's retries carry the run through. Then, with every upload
// cut, a publish fails, leaves nothing a reader can trip on, and a rerun finishes it.
func TestPublishToS3WithFaults(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t, "faults")
	proxy := srv.NewProxy(t)
	faults := []s3test.Fault{s3test.Throttle, s3test.Internal, s3test.Cut}
	var n sync.Mutex
	i := 0
	proxy.SetFaults(func(r *http.Request) s3test.Fault {
		n.Lock()
		defer n.Unlock()
		i++
		if i%3 == 0 {
			return faults[(i/3)%3]
		}
		return s3test.Pass
	})
	f := newFixture(t, s3test.URL(proxy.URL, bucket, "store"))
	var hps []string
	for v := range 4 {
		hps = append(hps, f.add(t, fmt.Sprintf("pkg-%d", v), version(41, v)))
	}
	f.publish(t, hps[:2]...)
	for _, fault := range faults {
		if proxy.Count(fault) == 0 {
			t.Errorf("fault %d never injected", fault)
		}
	}
	t.Logf("faults injected: throttle %d, 500 %d, cut %d", proxy.Count(s3test.Throttle), proxy.Count(s3test.Internal), proxy.Count(s3test.Cut))
	proxy.SetFaults(func(*http.Request) s3test.Fault { return s3test.Pass })
	f.verify(t)
	for _, hp := range hps[:2] {
		f.complete(t, hp)
	}

	// Every PUT of a manifest is cut: chunks land, manifests and narinfos never do.
	proxy.SetFaults(func(r *http.Request) s3test.Fault {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
			return s3test.Cut
		}
		return s3test.Pass
	})
	src, _ := blob.Open(f.cache.Dir, nil)
	kr, _ := nixcache.ParseKeyring([]string{f.cache.PublicKey})
	p, err := publish.New(nixcache.NewBinaryCache(src), f.store, kr, publish.Options{Params: smallParams, Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sum, err := p.Run(context.Background(), hps[2:])
	if !errors.Is(err, publish.ErrRefused) || sum.Refused != 2 {
		t.Fatalf("publish with every manifest upload cut: %+v, %v", sum, err)
	}
	for _, hp := range hps[2:] {
		if ok, _ := f.store.Backend().Exists(context.Background(), chunkstore.NarInfoKey(hp)); ok {
			t.Errorf("narinfo %s visible although its manifest never landed", hp)
		}
	}
	f.verify(t)
	proxy.SetFaults(func(*http.Request) s3test.Fault { return s3test.Pass })
	sum = f.publish(t, hps[2:]...)
	if sum.NARs != 2 {
		t.Errorf("rerun: %+v", sum)
	}
	for _, hp := range hps {
		f.complete(t, hp)
	}
	f.verify(t)
}
