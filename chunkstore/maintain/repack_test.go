package maintain

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoal-nix/shoal"
	"github.com/shoal-nix/shoal/blob"
	"github.com/shoal-nix/shoal/chunk"
	"github.com/shoal-nix/shoal/chunkstore"
	"github.com/shoal-nix/shoal/internal/testkit"
	"github.com/shoal-nix/shoal/manifest"
	"github.com/shoal-nix/shoal/nixcache"
	"github.com/shoal-nix/shoal/publish"
)

// packedOpts publishes to a packed store with small packs, so a small corpus makes
// many of them.
var packedOpts = publish.Options{Params: smallParams, Jobs: 2, Deltas: true, Layout: chunkstore.FormatPacked, PackSize: 64 << 10}

// readPacked reads the NAR of ni from a packed store the way a client does, through
// the locations of m, and checks every chunk against its ID and the NAR against its
// hash.
func readPacked(ctx context.Context, s *chunkstore.Store, ni *nixcache.NarInfo, m *manifest.Manifest) error {
	codec, err := chunk.NewCodec()
	if err != nil {
		return err
	}
	defer codec.Close()
	h := sha256.New()
	for i, e := range m.Entries {
		l := m.Locs[i]
		obj, err := s.ReadPackRange(ctx, m.Packs[l.Pack], l.Offset, e.StoredSize)
		if err != nil {
			return fmt.Errorf("%s: entry %d: %w", ni.StorePath, i, err)
		}
		b, err := codec.Open(nil, e.ID, obj, int(e.Size))
		if err != nil {
			return fmt.Errorf("%s: entry %d at %d of pack %s: %w", ni.StorePath, i, l.Offset, m.Packs[l.Pack], err)
		}
		h.Write(b)
	}
	if [32]byte(h.Sum(nil)) != ni.NarHash {
		return fmt.Errorf("%s: the chunks at the manifest's locations make another NAR", ni.StorePath)
	}
	return nil
}

// readAll reads every NAR of hps back through its current manifest.
func (f *fixture) readAll(t *testing.T, hps []string) {
	t.Helper()
	ctx := context.Background()
	for _, hp := range hps {
		m, _, err := f.store.Manifest(ctx, f.nis[hp].NarHash)
		if err != nil {
			t.Fatal(err)
		}
		if err := readPacked(ctx, f.store, f.nis[hp], m); err != nil {
			t.Fatal(err)
		}
	}
}

// packBytes is the size of every pack file in the store.
func packBytes(t *testing.T, s *chunkstore.Store) (n, bytes int64) {
	t.Helper()
	ctx := context.Background()
	err := s.Backend().List(ctx, chunkstore.PackPrefix, func(key string) error {
		if _, ok := chunkstore.ParsePackKey(key); !ok {
			return nil
		}
		info, err := s.Backend().Stat(ctx, key)
		if err != nil {
			return err
		}
		n++
		bytes += info.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, bytes
}

// releases adds n releases of a package: a binary rebuilt each release (every chunk
// new, each a small delta of the one before) beside data files that never change.
func (f *fixture) releases(t *testing.T, pkg string, seed uint64, n int) []string {
	data := testkit.RandomBytes(seed, 40<<10)
	bin := testkit.RandomBytes(seed+1, 150<<10)
	var hps []string
	for v := range n {
		if v > 0 {
			bin = release(bin, byte(v), 8<<10)
		}
		hps = append(hps, f.add(t, fmt.Sprintf("%s-%d", pkg, v), slices.Concat(data, bin)))
	}
	return hps
}

// TestCollectPackedReclaimsDeadBytes publishes five releases of four packages, one
// publish per release as a cache grows, drops the three oldest releases (60% of the
// narinfos) and collects twice, one grace period apart: the first run deletes the
// dead packs and repacks the mostly dead ones, the second deletes the repacked ones.
// At least 90% of the dead bytes must be gone, every kept NAR must read back, and
// verify must pass.
func TestCollectPackedReclaimsDeadBytes(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			const releases = 5
			var byRelease [releases][]string
			for p := range 4 {
				for v, hp := range f.releases(t, fmt.Sprintf("pkg%d", p), uint64(100+10*p), releases) {
					byRelease[v] = append(byRelease[v], hp)
				}
			}
			for v := range releases {
				f.publishWith(t, packedOpts, byRelease[v]...)
			}
			kept := slices.Concat(byRelease[3:]...)
			keep := func(hp string) bool { return slices.Contains(kept, hp) }
			packsBefore, bytesBefore := packBytes(t, f.store)
			const grace = time.Second
			waitOlder(grace)

			dry, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if n, b := packBytes(t, f.store); n != packsBefore || b != bytesBefore || dry.Packs.Repacked == 0 || dry.Packs.Deleted.Deleted == 0 {
				t.Fatalf("dry run: %+v; store went from %d packs (%d bytes) to %d (%d)", dry.Packs, packsBefore, bytesBefore, n, b)
			}
			f.readAll(t, slices.Concat(byRelease[:]...)) // the dry run deleted nothing

			first, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace})
			if err != nil {
				t.Fatal(err)
			}
			pr := first.Packs
			if pr.Repacked != dry.Packs.Repacked || pr.Deleted.Deleted != dry.Packs.Deleted.Deleted || pr.CopiedObjects != dry.Packs.CopiedObjects || pr.ManifestsRewritten != dry.Packs.ManifestsRewritten {
				t.Errorf("gc: %+v\ndry run said: %+v", pr, dry.Packs)
			}
			if first.NarInfos.Deleted != int64(len(f.nis)-len(kept)) {
				t.Errorf("%d narinfos deleted, want %d", first.NarInfos.Deleted, len(f.nis)-len(kept))
			}
			f.readAll(t, kept)
			f.verify(t)

			// Later runs, a grace period apart, delete what the first repacked. Which
			// copy of a duplicated object is kept follows the packs' live bytes, which
			// the first run changed, so a second run may fold a few more duplicates
			// by repacking once more; the store must settle within three.
			reclaimedLater, settled := int64(0), false
			for run := 2; run <= 4 && !settled; run++ {
				waitOlder(grace)
				rep, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace})
				if err != nil {
					t.Fatal(err)
				}
				reclaimedLater += rep.Packs.Reclaimed()
				settled = rep.Packs.Repacked == 0 && rep.Packs.Pending == 0
				if run == 2 && rep.Packs.Deleted.Deleted < pr.Repacked {
					t.Errorf("second gc: %+v; want the %d packs repacked by the first deleted", rep.Packs, pr.Repacked)
				}
				f.readAll(t, kept)
				f.verify(t)
			}
			if !settled {
				t.Error("gc still repacking after four runs")
			}

			packsAfter, bytesAfter := packBytes(t, f.store)
			reclaimed := bytesBefore - bytesAfter
			t.Logf("packs %d -> %d, %d -> %d bytes; live %d, dead %d; reclaimed %d (%.1f%% of the dead bytes); repack: %d packs, read %d bytes in %d requests, wrote %d bytes in %d packs, %d writes in all, %d manifests rewritten",
				packsBefore, packsAfter, bytesBefore, bytesAfter, pr.LiveBytes, pr.DeadBytes, reclaimed, 100*float64(reclaimed)/float64(pr.DeadBytes),
				pr.Repacked, pr.ReadBytes, pr.ReadRequests, pr.NewPackBytes, pr.NewPacks, pr.WriteRequests, pr.ManifestsRewritten)
			if pr.Bytes != bytesBefore || pr.LiveBytes+pr.DeadBytes != bytesBefore {
				t.Errorf("gc counted %d pack bytes (%d live, %d dead), the store holds %d", pr.Bytes, pr.LiveBytes, pr.DeadBytes, bytesBefore)
			}
			if float64(reclaimed) < 0.9*float64(pr.DeadBytes) {
				t.Errorf("reclaimed %d of %d dead bytes, want at least 90%%", reclaimed, pr.DeadBytes)
			}
			if got := reclaimedLater + first.Packs.Reclaimed(); got != reclaimed {
				t.Errorf("the reports say %d bytes reclaimed, the store shrank by %d", got, reclaimed)
			}

			// Nothing left to do; the dropped releases can be published again.
			again, err := Collect(ctx, f.store, Options{Keep: keep, Grace: grace})
			if err != nil || again.Packs.Repacked != 0 || again.Packs.Deleted.Deleted != 0 || again.FreedObjects() != 0 {
				t.Errorf("third gc: %+v, %v; want nothing to do", again.Packs, err)
			}
			f.publishWith(t, packedOpts, byRelease[0]...)
			f.readAll(t, slices.Concat(byRelease[0], kept))
			f.verify(t)
		})
	}
}

// copyStore copies every object of one store but its metadata into another, as two
// publishes that ran at once, neither seeing the other's packs, leave them.
func copyStore(t *testing.T, from, to *chunkstore.Store) {
	t.Helper()
	ctx := context.Background()
	err := from.Backend().List(ctx, "", func(key string) error {
		if key == chunkstore.MetaKey || key == chunkstore.CacheInfoKey {
			return nil
		}
		data, err := blob.ReadAll(ctx, from.Backend(), key, 1<<30)
		if err != nil {
			return err
		}
		return to.Backend().Put(ctx, key, data)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCollectPackedFoldsDuplicates: two publishes that both wrote the same chunks (each
// into its own packs, as publishes running at once do) leave duplicates; gc counts them,
// repacks the pack holding the copies no longer needed by pointing its manifest at the
// other copies, and deletes it one grace period later.
func TestCollectPackedFoldsDuplicates(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			shared := testkit.RandomBytes(71, 200<<10)
			a := f.add(t, "pkg-a-1", shared)
			b := f.add(t, "pkg-b-1", slices.Concat(shared, testkit.RandomBytes(72, 30<<10)))
			opts := packedOpts
			opts.PackSize = 1 << 20 // one pack per publish
			f.publishWith(t, opts, a)
			other := &fixture{cache: f.cache, store: chunkstore.New(mustOpen(t, open(t))), nis: f.nis}
			other.publishWith(t, opts, b)
			copyStore(t, other.store, f.store)
			f.verify(t)
			const grace = time.Second
			waitOlder(grace)

			all := func(string) bool { return true }
			first, err := Collect(ctx, f.store, Options{Keep: all, Grace: grace})
			if err != nil {
				t.Fatal(err)
			}
			pr := first.Packs
			// The NARs' last chunks differ; every other chunk of a is a duplicate.
			if pr.Duplicates == 0 || pr.DuplicatesRemoved != pr.Duplicates || pr.Repacked != 1 || pr.ManifestsRewritten != 1 || pr.CopiedObjects > 1 {
				t.Fatalf("first gc: %+v; want every duplicate removed by repacking one pack, copying only a's last chunk", pr)
			}
			f.readAll(t, []string{a, b})
			f.verify(t)
			// A publish after the repack points nowhere into the repacked pack.
			var repacked []chunk.ID
			if err := f.store.RepackedPacks(ctx, func(id chunk.ID) error { repacked = append(repacked, id); return nil }); err != nil || len(repacked) != 1 {
				t.Fatalf("repack records: %v, %v", repacked, err)
			}
			c := f.add(t, "pkg-c-1", shared)
			f.publishWith(t, opts, c)
			if m, _, err := f.store.Manifest(ctx, f.nis[c].NarHash); err != nil || slices.Contains(m.Packs, repacked[0]) {
				t.Fatalf("a NAR published after the repack points into the repacked pack (%v)", err)
			}
			waitOlder(grace)
			second, err := Collect(ctx, f.store, Options{Keep: all, Grace: grace})
			if err != nil {
				t.Fatal(err)
			}
			if second.Packs.Deleted.Deleted != 1 || second.Packs.Deleted.DeletedBytes < pr.DuplicateBytes || second.Packs.Repacked != 0 {
				t.Fatalf("second gc: %+v; want the repacked pack deleted", second.Packs)
			}
			third, err := Collect(ctx, f.store, Options{Keep: all, Grace: grace})
			if err != nil || third.Packs.Duplicates != 0 || third.Packs.Packs != 2 {
				t.Fatalf("third gc: %+v, %v; want b's pack, the copy of a's last chunk, and no duplicates", third.Packs, err)
			}
			f.readAll(t, []string{a, b, c})
			f.verify(t)
		})
	}
}

// TestCollectPackedConcurrentWithPublishAndReads runs collections (repacking, with a
// threshold that repacks nearly every pack) in a loop while new versions are
// published and a reader reads the kept NARs through the manifests it fetched first.
// A read through an old manifest may fail once its packs are gone: the reader then
// fetches the manifest again, and a read through that must never fail.
func TestCollectPackedConcurrentWithPublishAndReads(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			var hps []string
			for v := range 8 {
				hps = append(hps, f.add(t, fmt.Sprintf("pkg-%d", v), version(23, v)))
			}
			f.publishWith(t, packedOpts, hps[:3]...)
			const grace = time.Second
			waitOlder(grace)
			var mu sync.Mutex
			published := map[string]bool{hps[2]: true}
			isPublished := func(hp string) bool {
				mu.Lock()
				defer mu.Unlock()
				return published[hp]
			}
			var wg sync.WaitGroup
			pubDone, gcDone := make(chan struct{}), make(chan struct{})
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer close(pubDone)
				for _, hp := range hps[3:] {
					opts := packedOpts
					opts.Jobs = 1
					src, _ := blob.Open(f.cache.Dir, nil)
					kr, _ := nixcache.ParseKeyring([]string{f.cache.PublicKey})
					p, err := publish.New(nixcache.NewBinaryCache(src), f.store, kr, opts)
					if err != nil {
						t.Error(err)
						return
					}
					_, err = p.Run(ctx, []string{hp})
					p.Close()
					if err != nil {
						t.Errorf("publish %s: %v", hp, err)
						return
					}
					mu.Lock()
					published[hp] = true
					mu.Unlock()
				}
			}()
			var reads, refetched int
			go func() {
				defer wg.Done()
				held := map[string]*manifest.Manifest{}
				for stop := false; !stop; {
					select {
					case <-gcDone:
						stop = true
					default:
					}
					for _, hp := range hps[2:] {
						if !isPublished(hp) {
							continue
						}
						ni := f.nis[hp]
						if held[hp] != nil {
							if err := readPacked(ctx, f.store, ni, held[hp]); err == nil {
								reads++
								continue
							} else if !errors.Is(err, shoal.ErrNotFound) && !errors.Is(err, blob.ErrRange) {
								t.Errorf("read through an old manifest failed other than by a missing range: %v", err)
							}
							refetched++
						}
						m, _, err := f.store.Manifest(ctx, ni.NarHash)
						if err != nil {
							t.Errorf("manifest of kept %s: %v", hp, err)
							return
						}
						if err := readPacked(ctx, f.store, ni, m); err != nil {
							t.Errorf("read of kept %s through its current manifest: %v", hp, err)
							return
						}
						held[hp] = m
						reads++
					}
				}
			}()
			runs := 0
			var repacked, deleted int64
			for stop := false; !stop; runs++ {
				select {
				case <-pubDone:
					stop = true
				default:
				}
				rep, err := Collect(ctx, f.store, Options{Keep: isPublished, Grace: grace, RepackBelow: 0.99, PackSize: 32 << 10})
				if err != nil {
					t.Error(err)
					break
				}
				repacked += rep.Packs.Repacked
				deleted += rep.Packs.Deleted.Deleted
			}
			close(gcDone)
			wg.Wait()
			if t.Failed() {
				return
			}
			t.Logf("%d collections repacked %d packs and deleted %d; %d reads, %d through a manifest fetched again", runs, repacked, deleted, reads, refetched)
			if repacked == 0 {
				t.Error("no pack was repacked during the publishes")
			}
			f.readAll(t, hps[2:])
			f.verify(t)
			// A failed publish would have left a path without its narinfo.
			for _, hp := range hps[2:] {
				if _, err := f.store.NarInfo(ctx, hp); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestCollectPackedSparesPacksReusedDuringGC publishes, between gc's mark and its
// sweep, a NAR whose every chunk lies in the pack of a dropped narinfo: the pack,
// dead at the mark, must stay, and the new NAR read back.
func TestCollectPackedSparesPacksReusedDuringGC(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, open(t))
			nar := testkit.RandomBytes(81, 100<<10)
			dropped := f.add(t, "pkg-1", nar)
			opts := packedOpts
			opts.PackSize = 1 << 20
			f.publishWith(t, opts, dropped)
			const grace = time.Second
			waitOlder(grace)
			reuser := f.add(t, "pkg-1-copy", nar)
			var sum publish.Summary
			rep, err := Collect(ctx, f.store, Options{
				Keep:        func(hp string) bool { return hp == reuser },
				Grace:       grace,
				beforeSweep: func() { sum = f.publishWith(t, opts, reuser) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if sum.NARs != 1 || sum.NewChunks != 0 || sum.Packs != 0 {
				t.Fatalf("publish during gc: %+v, want one NAR reusing every chunk", sum)
			}
			if rep.Packs.Deleted.Deleted != 0 || rep.NarInfos.Deleted != 1 {
				t.Errorf("gc: %+v; want the dropped narinfo deleted and the reused pack spared", rep)
			}
			f.readAll(t, []string{reuser})
			f.verify(t)
		})
	}
}

// TestPublishRefreshesReusedPacks: a publish that points a manifest into a pack of an
// earlier run sets the pack's time to now, which is what keeps a concurrent gc off it
// even when the manifest comes after gc's re-read.
func TestPublishRefreshesReusedPacks(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	nar := testkit.RandomBytes(82, 100<<10)
	a := f.add(t, "pkg-1", nar)
	opts := packedOpts
	opts.PackSize = 1 << 20
	f.publishWith(t, opts, a)
	m, _, err := f.store.Manifest(ctx, f.nis[a].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	key := chunkstore.PackKey(m.Packs[0])
	waitOlder(0)
	before, err := f.store.Backend().Stat(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	b := f.add(t, "pkg-1-copy", nar)
	f.publishWith(t, opts, b)
	after, err := f.store.Backend().Stat(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime.After(before.ModTime) {
		t.Fatalf("pack %s not refreshed by a publish reusing it: %s, before %s", m.Packs[0], after.ModTime, before.ModTime)
	}
}

// TestCollectPackedRepackOfAWholePack: a pack with a repack record that a manifest
// points into again is repacked again; when every object of it is live, the copy has
// its bytes and so its name, and the pack must stay, its record gone.
func TestCollectPackedRepackOfAWholePack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	a := f.add(t, "pkg-1", testkit.RandomBytes(83, 100<<10))
	opts := packedOpts
	opts.PackSize = 1 << 20
	f.publishWith(t, opts, a)
	m, _, err := f.store.Manifest(ctx, f.nis[a].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.Backend().Put(ctx, chunkstore.RepackedKey(m.Packs[0]), []byte("x\n")); err != nil {
		t.Fatal(err)
	}
	const grace = time.Second
	waitOlder(grace)
	all := func(string) bool { return true }
	for range 2 {
		rep, err := Collect(ctx, f.store, Options{Keep: all, Grace: grace})
		if err != nil || rep.Packs.Deleted.Deleted != 0 || rep.Packs.Repacked != 0 {
			t.Fatalf("gc: %+v, %v", rep.Packs, err)
		}
		if ok, err := f.store.Backend().Exists(ctx, chunkstore.RepackedKey(m.Packs[0])); ok || err != nil {
			t.Fatalf("the record of a pack that stays survived (%v)", err)
		}
		f.readAll(t, []string{a})
		waitOlder(grace)
	}
	f.verify(t)
}
