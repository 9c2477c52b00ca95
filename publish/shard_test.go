package publish_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal/chunkstore/maintain"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"

	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/cachetest"
	"github.com/shoal-nix/shoal/internal/s3test"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want publish.Shard
		ok   bool
	}{
		{"0/1", publish.Shard{Index: 0, Count: 1}, true},
		{"3/4", publish.Shard{Index: 3, Count: 4}, true},
		{"4/4", publish.Shard{}, false},
		{"-1/4", publish.Shard{}, false},
		{"1/0", publish.Shard{}, false},
		{"1", publish.Shard{}, false},
		{"a/b", publish.Shard{}, false},
	} {
		got, err := publish.ParseShard(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseShard(%q) = %v, %v", tc.in, got, err)
		}
	}
}

// TestShardByPackageName: every version and output of a package goes to one shard,
// and the shards of many names spread over all workers.
func TestShardByPackageName(t *testing.T) {
	h := "/nix/store/" + cachetest.HashPart("x") + "-"
	for _, n := range []int{2, 3, 16} {
		for _, pkg := range []string{"go", "python3.12-numpy", "hello"} {
			want := publish.ShardOf(h+pkg+"-1.0", n)
			for _, v := range []string{"-1.1", "-2.0-dev", "-0.9-man", ""} {
				if got := publish.ShardOf(h+pkg+v, n); got != want {
					t.Errorf("%s%s in shard %d of %d, %s-1.0 in %d", pkg, v, got, n, pkg, want)
				}
			}
		}
		seen := map[int]bool{}
		for i := range 64 * n {
			seen[publish.ShardOf(fmt.Sprintf("%spkg%d-1.0", h, i), n)] = true
		}
		if len(seen) != n {
			t.Errorf("64×%d names fill %d of %d shards", n, len(seen), n)
		}
	}
}

// shardCorpus adds two versions of several packages, two for each of two shards, to
// cache. Every NAR also holds the same library, so packages on different shards share
// chunks: what two workers both write.
func shardCorpus(t *testing.T, cache *cachetest.Cache) (nars []*nixcache.NarInfo, raws map[string][]byte) {
	t.Helper()
	lib := testkit.RandomBytes(900, 64<<10)
	var names []string
	var byShard [2][]string
	raws = map[string][]byte{}
	for i := 0; len(byShard[0]) < 2 || len(byShard[1]) < 2; i++ {
		name := fmt.Sprintf("pkg%d", i)
		s := publish.ShardOf("/nix/store/"+cachetest.HashPart(name)+"-"+name+"-1.0", 2)
		if len(byShard[s]) < 2 {
			byShard[s] = append(byShard[s], name)
			names = append(names, name)
		}
	}
	for i, name := range names {
		v0 := append(testkit.RandomBytes(uint64(1000+i), 120<<10), lib...)
		v1 := nextRelease(v0, byte(i+1), 3000)
		nars = append(nars,
			cache.Add(t, cachetest.HashPart(name+"0"), name+"-1.0", v0, "zstd"),
			cache.Add(t, cachetest.HashPart(name+"1"), name+"-1.1", v1, "none"))
		raws[nars[len(nars)-1].HashPart()] = v1
	}
	return nars, raws
}

// TestPublishShardedS3: two workers, --shard 0/2 and 1/2, publish one corpus into one
// MinIO bucket at the same time. Together they publish every NAR once, every NAR
// reads back through its version 3 manifest, each NAR gets its delta base from its
// own worker, and the chunks both wrote are counted as duplicates in the pack
// indexes (an unsharded publish of the same corpus has none). A later run of one
// shard finds its base through the name index and reuses the base's chunks where
// its manifest says they lie.
func TestPublishShardedS3(t *testing.T) {
	srv := s3test.Start(t)
	cache := cachetest.New(t, "test-1")
	nars, raws := shardCorpus(t, cache)
	var hps []string
	for _, ni := range nars {
		hps = append(hps, ni.HashPart())
	}
	opts := publish.Options{Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, PackSize: 64 << 10, MinReuseRun: -1}

	whole := srv.URL(srv.Bucket(t, "whole"), "store")
	if _, err := runWith(t, cache, whole, opts, hps...); err != nil {
		t.Fatal(err)
	}
	ws, _ := chunkstore.Open(whole, nil)
	wd, err := ws.CountDuplicates(context.Background())
	if err != nil || wd.Extra != 0 {
		t.Fatalf("unsharded publish: duplicates %+v, %v", wd, err)
	}

	url := srv.URL(srv.Bucket(t, "sharded"), "store")
	var sums [2]publish.Summary
	var errs [2]error
	done := make(chan int)
	for i := range 2 {
		go func() {
			o := opts
			o.Shard = publish.Shard{Index: i, Count: 2}
			sums[i], errs[i] = runWith(t, cache, url, o, hps...)
			done <- i
		}()
	}
	<-done
	<-done
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("shard %d/2: %v", i, errs[i])
		}
		// Four of the eight NARs, two packages with a base each.
		if sums[i].NARs != 4 || sums[i].OtherShards != 4 || sums[i].WithBase != 2 {
			t.Errorf("shard %d/2: %+v", i, sums[i])
		}
	}
	s, _ := chunkstore.Open(url, nil)
	for _, ni := range nars {
		checkPacked(t, s, ni)
	}
	d, err := s.CountDuplicates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Extra == 0 || d.Distinct != wd.Distinct || d.Objects != d.Distinct+d.Extra {
		t.Fatalf("sharded: duplicates %+v, unsharded %+v: want the shared library's chunks twice", d, wd)
	}
	t.Logf("sharded publish: %d objects, %d distinct, %d extra copies (%d bytes); unsharded: %d objects", d.Objects, d.Distinct, d.Extra, d.ExtraBytes, wd.Objects)

	// The next gc folds the duplicates: a repack rewrites the manifests naming the extra
	// copies (every pack holding one is below the threshold), and a gc a grace period
	// later deletes the packs left with nothing live. S3 times are whole seconds, so
	// the collections run as if an hour, then two, had passed.
	for i, hours := range []time.Duration{1, 2} {
		now := func() time.Time { return time.Now().Add(hours * time.Hour) }
		rep, err := maintain.Collect(context.Background(), s, maintain.Options{Keep: func(string) bool { return true }, Grace: time.Minute, RepackBelow: 0.999, Now: now})
		if err != nil {
			t.Fatalf("gc %d: %v", i+1, err)
		}
		t.Logf("gc %d: %+v", i+1, rep.Packs)
	}
	after, err := s.CountDuplicates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if after.Extra != 0 || after.Distinct != d.Distinct {
		t.Fatalf("after gc: duplicates %+v; want none of the %d extra copies left and %d distinct objects", after, d.Extra, d.Distinct)
	}
	for _, ni := range nars {
		checkPacked(t, s, ni)
	}

	// The next release of one package, by the worker of its shard: the base comes
	// from the name index, and the chunks shared with it stay where they are.
	name := "pkg0"
	shard := publish.ShardOf("/nix/store/"+cachetest.HashPart(name)+"-"+name+"-1.0", 2)
	var v1 *nixcache.NarInfo
	for _, ni := range nars {
		if ni.HashPart() == cachetest.HashPart(name+"1") {
			v1 = ni
		}
	}
	v2 := cache.Add(t, cachetest.HashPart(name+"2"), name+"-1.2", nextRelease(raws[v1.HashPart()], 9, 30<<10), "none")
	o := opts
	o.Shard = publish.Shard{Index: shard, Count: 2}
	sum, err := runWith(t, cache, url, o, v2.HashPart())
	if err != nil || sum.NARs != 1 || sum.WithBase != 1 {
		t.Fatalf("later run: %+v, %v", sum, err)
	}
	m2, m1 := checkPacked(t, s, v2), checkPacked(t, s, v1)
	if m2.BaseNarHash != v1.NarHash {
		t.Fatalf("base of %s is not %s", v2.StorePath, v1.StorePath)
	}
	at := map[chunk.ID]bool{}
	for _, e := range m1.Entries {
		at[e.ID] = true
	}
	reused := 0
	for i, e := range m2.Entries {
		if at[e.ID] && slices.Contains(m1.Packs, m2.Packs[m2.Locs[i].Pack]) {
			reused++
		}
	}
	if reused == 0 || sum.NewChunks >= sum.Chunks {
		t.Fatalf("later run reused %d of the base's chunks in place (%d new of %d)", reused, sum.NewChunks, sum.Chunks)
	}
}

// lateMeta is a store whose metadata another worker writes just after this one first
// looked for it.
type lateMeta struct {
	blob.Backend
	once  sync.Once
	other func()
}

func (b *lateMeta) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	first := false
	if key == chunkstore.MetaKey {
		b.once.Do(func() { first = true })
	}
	if first {
		b.other()
		return nil, fmt.Errorf("%s: %w", key, shoal.ErrNotFound)
	}
	return b.Backend.Open(ctx, key)
}

// TestShardsStartOnAnEmptyStore: workers of an array job start at once on an empty
// store; one that finds the store empty and then, a moment later, another worker's
// metadata in it, publishes rather than refusing a store that "holds other things".
func TestShardsStartOnAnEmptyStore(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", testkit.RandomBytes(5, 20<<10), "none")
	dir := t.TempDir()
	fb, err := blob.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &lateMeta{Backend: fb, other: func() {
		if _, err := chunkstore.New(fb).Init(context.Background(), "file://"+cache.Dir, smallParams, chunkstore.Mode{Layout: chunkstore.FormatPacked}, time.Now()); err != nil {
			t.Error(err)
		}
	}}
	src, _ := blob.Open(cache.Dir, nil)
	kr, _ := nixcache.ParseKeyring([]string{cache.PublicKey})
	p, err := publish.New(nixcache.NewBinaryCache(src), chunkstore.New(b), kr, publish.Options{Params: smallParams, Jobs: 1, Layout: chunkstore.FormatPacked, Shard: publish.Shard{Index: publish.ShardOf(a.StorePath, 2), Count: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if sum, err := p.Run(context.Background(), []string{a.HashPart()}); err != nil || sum.NARs != 1 {
		t.Fatalf("%+v, %v", sum, err)
	}
}

// TestShardResumesWithBaseInRun: an interrupted sharded run left a NAR's manifest and
// name entry but not its narinfo; the next run, given that NAR and its next version,
// publishes both and makes the deltas of the next version against it.
func TestShardResumesWithBaseInRun(t *testing.T) {
	cache := cachetest.New(t, "test-1")
	v0 := testkit.RandomBytes(70, 4<<20) // long enough to publish that the next job starts meanwhile
	a := cache.Add(t, cachetest.HashPart("a"), "pkg-1.0", v0, "none")
	b := cache.Add(t, cachetest.HashPart("b"), "pkg-1.1", nextRelease(v0, 3, 256<<10), "none")
	for _, layout := range []int{chunkstore.FormatVersion, chunkstore.FormatPacked} {
		t.Run(fmt.Sprint("layout ", layout), func(t *testing.T) {
			dir := t.TempDir()
			opts := publish.Options{Jobs: 2, Deltas: true, Layout: layout, Shard: publish.Shard{Index: publish.ShardOf(a.StorePath, 1), Count: 1}}
			if _, err := runWith(t, cache, dir, opts, a.HashPart()); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, a.HashPart()+".narinfo")); err != nil {
				t.Fatal(err)
			}
			sum, err := runWith(t, cache, dir, opts, a.HashPart(), b.HashPart())
			if err != nil || sum.NARs != 2 || sum.WithBase != 1 {
				t.Fatalf("resumed run: %+v, %v", sum, err)
			}
		})
	}
}
